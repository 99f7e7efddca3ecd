"""The 8-bit backbone: real ImageNet weights, real demo photos, ONNX Runtime and OpenVINO."""

import numpy as np
import pytest

from conftest import DEMO, demo_photos
from core.features.embeddings import Embedder
from core.features.quantized import quantized_backbone


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def photos():
    return [photo for category in ("Banana", "Lemon", "Arla-Standard-Milk", "Red-Bell-Pepper")
            for photo in demo_photos(category)[:3]]


def test_int8_features_are_the_float32_ones_up_to_rounding(photos):
    exact, failures = Embedder(backbone="efficientnet_lite0", views=0, precision="float32").embed_sources(photos)
    int8 = Embedder(backbone="efficientnet_lite0", views=0, precision="int8")
    rounded, int8_failures = int8.embed_sources(photos)
    assert not failures and not int8_failures
    assert rounded.dtype == np.float32 and rounded.shape == exact.shape
    cosine = _cosine(exact, rounded)
    assert cosine.min() > 0.97 and np.median(cosine) > 0.99, cosine
    assert not np.array_equal(exact, rounded), "int8 ran the float32 network"
    # Each photo stays nearest to its own float32 vector: rounding never swaps two products.
    assert (np.argmax(rounded @ exact.T, axis=1) == np.arange(len(photos))).all()


def test_int8_is_cached_under_its_own_key_and_converted_once(photos, monkeypatch, tmp_path):
    monkeypatch.setenv("PRODUCTLENS_CACHE", str(tmp_path))
    first = Embedder(backbone="efficientnet_lite0", views=0, precision="int8")
    exact = Embedder(backbone="efficientnet_lite0", precision="float32")
    assert first.key == exact.key + "+int8"
    first.embed_sources(photos[:1])
    graphs = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(graphs) == 1, graphs
    written = graphs[0].stat().st_mtime_ns
    again = quantized_backbone("efficientnet_lite0", "imagenet", first.image_size, first.pooling)
    assert again.path == graphs[0] and graphs[0].stat().st_mtime_ns == written, "converted a second time"
    # The photo alone by default; with the mirror pass, the photo's and its mirror's average, as in float32.
    pixels = first.load_pixels(photos[0])[None]
    mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
    np.testing.assert_allclose(first.embed_pixels(pixels), again(pixels), rtol=1e-5, atol=1e-6)
    both = (again(pixels) + again(mirrored)) / 2
    np.testing.assert_allclose(first.embed_pixels(pixels, flip_tta=True), both, rtol=1e-5, atol=1e-6)


def _needs(runtime):
    if runtime == "openvino":  # installed with requirements.txt on Linux x86-64 only (the CPUs with AMX)
        pytest.importorskip("openvino", reason="OpenVINO is installed on Linux x86-64 only")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_batch_split_across_threads_gives_each_photo_its_own_features(photos, runtime):
    _needs(runtime)
    embedder = Embedder(backbone="efficientnet_lite0", views=0, precision="int8")
    pixels = np.stack([embedder.load_pixels(photo) for photo in photos[:5]])

    def backbone(threads):
        network = quantized_backbone("efficientnet_lite0", "imagenet", embedder.image_size, embedder.pooling,
                                     threads=threads, runtime=runtime)
        assert network.runtime == runtime
        return network

    alone = np.concatenate([backbone(1)(pixels[i:i + 1]) for i in range(len(pixels))])
    if runtime == "openvino":  # two one-thread workers on one machine must not both be pinned to its first core
        assert backbone(1).compiled.get_property("ENABLE_CPU_PINNING") is False
    # Odd batches, a batch smaller than the threads, one photo: each row is still its own photo's.
    for threads in (2, 3, 8):
        split = backbone(threads)
        np.testing.assert_allclose(split(pixels), alone, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(split(pixels[:1]), alone[:1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(split(pixels[::-1]), alone[::-1], rtol=1e-5, atol=1e-5)
    assert split(pixels[:0]).shape == (0, alone.shape[1])


def test_the_two_runtimes_give_the_same_features_to_a_finer_rounding_than_float32s(photos, monkeypatch):
    """OpenVINO and ONNX Runtime run one graph: their features share the ``+int8`` key because they are
    closer to each other than either is to float32 (as bfloat16's are to float32's)."""
    _needs("openvino")
    exact, _ = Embedder(backbone="efficientnet_lite0", views=0, precision="float32").embed_sources(photos)
    features = {}
    for runtime in ("onnxruntime", "openvino"):
        monkeypatch.setenv("PRODUCTLENS_INT8_RUNTIME", runtime)
        embedder = Embedder(backbone="efficientnet_lite0", views=0, precision="int8")
        features[runtime], failures = embedder.embed_sources(photos)
        assert not failures and embedder.key.endswith("+int8")
        assert _cosine(exact, features[runtime]).min() > 0.97
    between = _cosine(features["onnxruntime"], features["openvino"])
    assert between.min() > 0.995, between
    assert between.min() > _cosine(exact, features["openvino"]).min()
    assert not np.array_equal(features["onnxruntime"], features["openvino"]), "one runtime ran both times"


def test_openvino_runs_the_8_bit_graph_where_the_cpu_has_amx(monkeypatch):
    import importlib.util

    from core import settings

    monkeypatch.delenv("PRODUCTLENS_INT8_RUNTIME", raising=False)
    find_spec = importlib.util.find_spec
    installed = find_spec("onnxruntime")  # any spec: OpenVINO counts as installed until said otherwise
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: installed if name == "openvino"
                        else find_spec(name, *args))
    monkeypatch.setattr(settings, "cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert settings.int8_runtime() == "onnxruntime"
    monkeypatch.setattr(settings, "cpu_flags", lambda: {"avx512f", "avx512_vnni", "amx_tile", "amx_int8"})
    assert settings.int8_runtime() == "openvino"
    monkeypatch.setenv("PRODUCTLENS_INT8_RUNTIME", "onnxruntime")
    assert settings.int8_runtime() == "onnxruntime"
    monkeypatch.setenv("PRODUCTLENS_INT8_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="PRODUCTLENS_INT8_RUNTIME must be one of onnxruntime, openvino"):
        settings.int8_runtime()
    monkeypatch.delenv("PRODUCTLENS_INT8_RUNTIME")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "openvino"
                        else find_spec(name, *args))
    assert settings.int8_runtime() == "onnxruntime", "OpenVINO is not installed: ONNX Runtime runs the graph"


def test_int8_calibrates_on_the_demo_photos_only():
    from core.features.quantized import calibration_pixels

    calibration = calibration_pixels(64)
    assert len(calibration) == len(list(DEMO.glob("*/*.jpg")))
    assert all(pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8 for pixels in calibration)


def test_int8_is_the_default_on_a_cpu_and_the_setting_names_its_choices(monkeypatch):
    from core import settings

    monkeypatch.delenv("PRODUCTLENS_PRECISION", raising=False)
    assert Embedder(backbone="efficientnet_lite0").precision == "int8"
    monkeypatch.setenv("PRODUCTLENS_PRECISION", "float32")
    assert Embedder(backbone="efficientnet_lite0").precision == "float32"
    monkeypatch.setenv("PRODUCTLENS_PRECISION", "int4")
    with pytest.raises(ValueError, match="float32, bfloat16, int8"):
        settings.embedding_precision()


def test_a_default_openvino_that_cannot_run_the_graph_leaves_it_to_onnx_runtime(monkeypatch):
    from core import settings
    from core.features import quantized

    _needs("openvino")

    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(quantized, "OpenVinoBackbone", broken)
    monkeypatch.setattr(settings, "cpu_flags", lambda: {"amx_int8"})
    monkeypatch.delenv("PRODUCTLENS_INT8_RUNTIME", raising=False)
    model = Embedder(backbone="efficientnet_lite0")
    arguments = ("efficientnet_lite0", "imagenet", model.image_size, model.pooling)
    with pytest.warns(RuntimeWarning, match="OpenVINO could not run the 8-bit graph .*no CPU plugin"):
        network = quantized_backbone(*arguments)
    assert network.runtime == "onnxruntime"
    # The embedder says which runtime it uses: the chosen one until it runs, then the one that runs.
    assert model.runtime == "openvino" and Embedder(precision="float32").runtime == "tensorflow"
    with pytest.warns(RuntimeWarning):
        model.embed_pixels(np.zeros((1, model.image_size, model.image_size, 3), np.uint8))
    assert model.runtime == "onnxruntime"
    # Asked for by name, it is not replaced: the error says what went wrong.
    monkeypatch.setenv("PRODUCTLENS_INT8_RUNTIME", "openvino")
    with pytest.raises(RuntimeError, match="no CPU plugin"):
        quantized_backbone(*arguments)
    monkeypatch.delenv("PRODUCTLENS_INT8_RUNTIME")
    with pytest.raises(RuntimeError, match="no CPU plugin"):
        quantized_backbone(*arguments, runtime="openvino")
