import numpy as np
import pytest

from conftest import IMAGENET_CHECKS, imagenet_check_photo
from core.features._torch_legacy import load_legacy_state_dict
from core.features.efficientnet_lite import (
    VARIANTS,
    assign_torch_state_dict,
    block_layout,
    build_efficientnet_lite,
    cached_weights_path,
    fold_batch_norm,
    load_efficientnet_lite,
    pretrained_weights_file,
)
from core.storage import images


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite2"])
def test_block_layout_matches_the_published_weights(variant):
    state = load_legacy_state_dict(pretrained_weights_file(variant))
    blocks = list(block_layout(VARIANTS[variant]))
    assert f"_blocks.{len(blocks) - 1}._depthwise_conv.weight" in state
    assert f"_blocks.{len(blocks)}._depthwise_conv.weight" not in state
    for index, (kernel, _stride, expand, filters_in, filters_out) in enumerate(blocks):
        assert state[f"_blocks.{index}._depthwise_conv.weight"].shape[2:] == (kernel, kernel)
        assert state[f"_blocks.{index}._project_conv.weight"].shape[:2] == (filters_out, filters_in * expand)


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    return load_efficientnet_lite("efficientnet_lite0", 224, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("category", sorted(IMAGENET_CHECKS))
def test_converted_model_recognises_real_product_photos(imagenet_model, category):
    pixels = images.load_for_model(imagenet_check_photo(category), 224)
    probabilities = imagenet_model.predict(pixels[None].astype("float32"), verbose=0)[0]
    assert int(np.argmax(probabilities)) == IMAGENET_CHECKS[category]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-3)


def test_folded_batch_norm_graph_gives_the_same_predictions(imagenet_model):
    folded = build_efficientnet_lite("efficientnet_lite0", 224, folded=True)
    fold_batch_norm(imagenet_model, folded)
    assert not [layer for layer in folded.layers if "BatchNormalization" in type(layer).__name__]
    pixels = np.stack([images.load_for_model(imagenet_check_photo(c), 224) for c in sorted(IMAGENET_CHECKS)])
    reference = imagenet_model.predict(pixels.astype("float32"), verbose=0)
    fast = folded.predict(pixels.astype("float32"), verbose=0)
    assert (fast.argmax(axis=1) == reference.argmax(axis=1)).all()
    np.testing.assert_allclose(fast, reference, atol=1e-4)


def test_conversion_is_cached_and_reused(tmp_path):
    first = load_efficientnet_lite("efficientnet_lite0", 224, cache_dir=tmp_path)
    cached = cached_weights_path("efficientnet_lite0", tmp_path)
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    second = load_efficientnet_lite("efficientnet_lite0", 224, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == stamp, "the cache was rewritten instead of reused"
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_damaged_cache_is_rebuilt(tmp_path):
    cached = cached_weights_path("efficientnet_lite0", tmp_path)
    cached.write_bytes(b"not an h5 file")
    model = load_efficientnet_lite("efficientnet_lite0", 224, cache_dir=tmp_path)
    assert cached.stat().st_size > 10_000_000
    stem = model.get_layer("stem_conv").get_weights()[0]
    reference = load_legacy_state_dict(pretrained_weights_file("efficientnet_lite0"))["_conv_stem.weight"]
    np.testing.assert_array_equal(stem, reference.transpose(2, 3, 1, 0))


def test_wrong_state_dict_is_refused():
    model = build_efficientnet_lite("efficientnet_lite0", 224)
    lite2 = load_legacy_state_dict(pretrained_weights_file("efficientnet_lite2"))
    with pytest.raises(ValueError, match="shape mismatch|lacks|does not use"):
        assign_torch_state_dict(model, lite2)
