import io

import numpy as np
import pytest
from PIL import Image

from conftest import embedded_demo
from core.errors import TrainingError
from core.features.embeddings import Embedder
from core.jobs import import_and_predict
from core.model.fine_tuning import (
    FineTuner,
    TopOfNetwork,
    balanced_sample,
    cached_activations,
    fine_tune_version,
)
from core.model.prediction import predict_catalog
from core.model.training import embedder_for
from core.storage.catalog import Catalog


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory, embedder):
    return embedded_demo(tmp_path_factory, embedder, "fine-tuning")


def test_the_top_of_the_network_finishes_the_forward_pass_from_cached_activations(demo_workspace, embedder):
    """The split must be exact: features from activations + the top equal the whole backbone's."""
    catalog = Catalog(demo_workspace)
    products = catalog.products()[:6]
    top = TopOfNetwork(embedder)
    assert top.embedder.precision == "float32", "the top trains on float32 activations"
    pixels = np.stack([embedder.load_pixels(catalog.image_path(product)) for product in products])
    whole = top.embedder.embed_pixels(pixels, flip_tta=False)
    np.testing.assert_allclose(top.features(top.activations(pixels)), whole, atol=2e-3)


def test_activations_are_computed_once_per_photo(demo_workspace, embedder, monkeypatch):
    catalog = Catalog(demo_workspace)
    top = TopOfNetwork(embedder)
    ids = [product.id for product in catalog.products()[:3]]
    kept, passes = cached_activations(catalog, top, ids)
    assert kept == ids and len(passes) == 2 + embedder.views  # photo, mirror, crop views
    assert all(len(slot) == 3 for pass_ in passes for slot in pass_)
    monkeypatch.setattr(top, "activations", lambda _pixels: pytest.fail("recomputed a cached photo"))
    _, again = cached_activations(catalog, top, ids)
    np.testing.assert_array_equal(again[1][0], passes[1][0])


def test_fine_tuning_stores_a_version_whose_backbone_reproduces_its_features(demo_workspace, embedder):
    catalog = Catalog(demo_workspace)
    before = catalog.active_model_version()
    version = fine_tune_version(catalog, embedder, FineTuner(epochs=3, classifier_epochs=3, learning_rate=1e-3))
    assert version.is_active and (before is None or version.id != before.id)
    assert version.metrics["fine_tuned"] and len(version.metrics["fine_tune_loss"]) == 3
    assert version.metrics["n_fine_tuned"] == len(catalog.current_labels())
    assert version.params["base_embedding"] == embedder.key and version.embedding_key != embedder.key
    # The saved convolution moved away from ImageNet's; the rest of the backbone did not; and the embedder
    # passed in (the app shares it with uploads) still computes ImageNet features.
    tuned = embedder_for(version)
    imagenet = Embedder(backbone=embedder.backbone).model
    changed = tuned.model
    assert np.abs(imagenet.get_layer("top_conv").get_weights()[0]
                  - changed.get_layer("top_conv").get_weights()[0]).max() > 1e-3
    np.testing.assert_array_equal(imagenet.get_layer("stem_conv").get_weights()[0],
                                  changed.get_layer("stem_conv").get_weights()[0])
    np.testing.assert_array_equal(embedder.model.get_layer("top_conv").get_weights()[0],
                                  imagenet.get_layer("top_conv").get_weights()[0])
    # A fresh embedder built from the stored file gives the features the version was trained on.
    ids, _ = catalog.embeddings(version.embedding_key)
    assert len(ids) == catalog.count_products()
    # (labelled products' features came from their cached float16 activations, the others from embedding)
    unlabelled = [int(pid) for pid in ids if int(pid) not in catalog.current_labels()]
    chosen = [int(pid) for pid in ids[:3]] + unlabelled[:2]
    fresh = tuned.embed_sources([catalog.image_path(pid) for pid in chosen])[0]
    stored = catalog.embeddings(version.embedding_key, chosen)[1]
    cosine = (fresh * stored).sum(axis=1) / np.linalg.norm(fresh, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosine.min() > 0.9995, cosine
    imagenet_features = Embedder(backbone=embedder.backbone, precision="float32").embed_sources(
        [catalog.image_path(pid) for pid in chosen])[0]
    assert np.abs(imagenet_features - fresh).max() > 1e-3, "the stored features are the tuned network's"
    result = predict_catalog(catalog, version)
    assert result["predicted"] == catalog.count_products()
    labels = catalog.current_labels()
    predictions = catalog.predictions(version.id)
    right = sum(predictions[pid]["label"] == label for pid, label in labels.items())
    assert right >= 0.9 * len(labels), f"{right} of {len(labels)} own labels"

    # An upload while the fine-tuned version is active: embedded with its backbone too, and predicted.
    mirrored = io.BytesIO()
    Image.open(catalog.image_path(int(ids[0]))).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored, "PNG")
    upload = import_and_predict(catalog, [("mirrored.png", mirrored.getvalue())], embedder)
    assert upload.prediction_error is None and upload.predicted == 1
    new_ids, _ = catalog.embeddings(version.embedding_key, upload.product_ids)
    assert new_ids.tolist() == upload.product_ids
    assert upload.product_ids[0] in catalog.predictions(version.id)


def test_fine_tuning_needs_an_efficientnet_lite_with_multi_pooling():
    with pytest.raises(TrainingError, match="multi pooling"):
        TopOfNetwork(Embedder(backbone="efficientnet_lite0", weights=None, pooling="avg"))
    with pytest.raises(ValueError, match="learning_rate"):
        FineTuner(learning_rate=2.0)


def test_a_version_reads_a_fine_tuned_backbone_only_from_its_own_workspace(tmp_path):
    """Restored elsewhere it still finds the file; a doctored catalogue cannot point outside ``models/``."""
    catalog = Catalog(tmp_path / "ws")
    settings = {"backbone": "efficientnet_lite0", "image_size": 288, "crop": "full", "flip_tta": True,
                "weights": "/somewhere/else/backbone-1.weights.h5", "pooling": "multi", "views": 0}
    version = catalog.model_version(catalog.add_model_version(
        "k", ["a", "b"], {"fine_tuned": True}, {"embedder": settings}, "models/head.keras", activate=False))
    assert embedder_for(version, catalog).weights == str(catalog.workspace / "models" / "backbone-1.weights.h5")
    settings["weights"] = "../../etc/passwd"
    doctored = catalog.model_version(catalog.add_model_version(
        "k", ["a", "b"], {}, {"embedder": settings}, "models/head.keras", activate=False))
    assert embedder_for(doctored, catalog).weights == str(catalog.workspace / "models" / "passwd")


def test_a_big_catalogue_fine_tunes_on_a_balanced_sample():
    labels = {pid: ("common" if pid < 900 else "rare") for pid in range(1000)}
    chosen = balanced_sample(labels, 200)
    assert len(chosen) == 200 and len(set(chosen)) == 200
    assert sum(labels[pid] == "rare" for pid in chosen) == 100, "the rare category gets its share first"
    assert balanced_sample(labels, 2000) == sorted(labels)
    assert balanced_sample(labels, 200) == chosen, "the same sample every time"
