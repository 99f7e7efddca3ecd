import numpy as np
import pytest

from core.features import backbones
from core.features.pooling import GeneralizedMeanPooling


def test_generalized_mean_pooling_matches_its_formula_and_survives_saving(tmp_path):
    import keras

    maps = np.random.default_rng(0).uniform(0, 6, (2, 3, 4, 5)).astype("float32")
    expected = np.mean(maps ** 3, axis=(1, 2)) ** (1 / 3)
    inputs = keras.Input((3, 4, 5))
    model = keras.Model(inputs, GeneralizedMeanPooling(3.0, name="gem")(inputs))
    np.testing.assert_allclose(model.predict(maps, verbose=0), expected, rtol=1e-5)
    assert (expected > maps.mean(axis=(1, 2))).all(), "GeM weighs strong activations more than an average"
    path = tmp_path / "gem.keras"
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(maps, verbose=0), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="power"):
        GeneralizedMeanPooling(0.0)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_lite2"])
def test_multi_pooling_gives_unit_vectors_of_the_documented_size(name):
    spec = backbones.spec(name)
    model = backbones.build_feature_model(name, weights=None, image_size=96, pooling="multi")
    features = model.predict(np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32"), verbose=0)
    assert features.shape == (2, spec.multi_feature_dim)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-3)
    assert not model.trainable


def test_composite_backbone_gives_each_network_its_own_resolution():
    model = backbones.build_feature_model("efficientnet_lite0_lite2", weights=None, image_size=320)
    resize = model.get_layer("efficientnet_lite0_resize")
    assert tuple(resize.output.shape[1:3]) == (288, 288)
    assert model.get_layer("efficientnet_lite2").input.shape[1:3] == (320, 320)


def test_default_backbone_with_real_weights_tells_categories_apart():
    """The composite default loads both networks' ImageNet weights (no network) and they carry meaning."""
    from conftest import demo_photos
    from core.features.embeddings import Embedder

    embedder = Embedder(backbone="efficientnet_lite0_lite2")
    lemons, _ = embedder.embed_sources(demo_photos("Lemon")[:3])
    milk, _ = embedder.embed_sources(demo_photos("Arla-Standard-Milk")[:3])
    assert lemons.shape == (3, 3632)
    within = (lemons @ lemons.T)[np.triu_indices(3, 1)].mean()
    across = (lemons @ milk.T).mean()
    assert within > across + 0.1
