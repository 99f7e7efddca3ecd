import os

import numpy as np
import pytest

from core import ingest
from core.catalog import Catalog
from core.embeddings import embed_catalog
from core.head import HeadClassifier
from core.prediction import predict_catalog
from core.training import TrainingError, activate, load_version, train_version


@pytest.fixture(scope="module")
def trained_workspace(tmp_path_factory, demo_dir, embedder):
    workspace = tmp_path_factory.mktemp("trained")
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir])
    embed_catalog(catalog, embedder)
    return workspace


def fast_head():
    return HeadClassifier(max_epochs=40)


def test_train_stores_an_active_version_with_metrics(trained_workspace, embedder):
    catalog = Catalog(trained_workspace)
    version = train_version(catalog, embedder, fast_head())
    assert version["is_active"] and len(version["classes"]) == 10
    metrics = version["metrics"]
    assert metrics["n_train"] == 80 and 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class"]) == set(version["classes"])
    assert (catalog.workspace / version["path"]).is_file()
    result = predict_catalog(catalog)
    assert result["predicted"] == 80
    predictions = catalog.predictions(version["id"])
    labels = catalog.current_labels()
    accuracy = np.mean([predictions[pid]["label"] == label for pid, label in labels.items()])
    assert accuracy > 0.9, "the head should fit its own training photos"
    first = next(iter(predictions.values()))
    assert len(first["labels"]) == 5 and first["probabilities"] == sorted(first["probabilities"], reverse=True)


def test_previous_version_can_be_reactivated(trained_workspace, embedder):
    catalog = Catalog(trained_workspace)
    first = train_version(catalog, embedder, fast_head())
    second = train_version(catalog, embedder, fast_head())
    assert catalog.active_model_version()["id"] == second["id"]
    activate(catalog, first["id"])
    assert catalog.active_model_version()["id"] == first["id"]
    assert [v["is_active"] for v in catalog.model_versions()].count(True) == 1
    version, head = load_version(catalog)
    assert version["id"] == first["id"] and list(head.classes_) == first["classes"]


def test_a_crash_while_saving_keeps_the_previous_model(trained_workspace, embedder, monkeypatch):
    catalog = Catalog(trained_workspace)
    good = train_version(catalog, embedder, fast_head())
    models_before = set(os.listdir(catalog.workspace / "models"))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated crash during rename)")

    monkeypatch.setattr("core.head.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        train_version(catalog, embedder, fast_head())
    monkeypatch.undo()
    assert catalog.active_model_version()["id"] == good["id"]
    assert set(os.listdir(catalog.workspace / "models")) == models_before, "no partial model file left"
    assert load_version(catalog)[1].predict_proba(catalog.embeddings(embedder.key)[1][:2]).shape == (2, 10)


def test_training_needs_two_categories(tmp_path, embedder, demo_dir):
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    embed_catalog(catalog, embedder)
    with pytest.raises(TrainingError, match="at least 2 categories"):
        train_version(catalog, embedder)


def test_training_an_empty_catalogue_says_what_to_do(tmp_path, embedder):
    with pytest.raises(TrainingError, match="import"):
        train_version(Catalog(tmp_path / "ws"), embedder)


def test_predictions_come_from_the_photo_averaged_with_its_views(trained_workspace, embedder):
    """Test-time augmentation: the stored prediction vector, not the plain photo vector, decides."""
    catalog = Catalog(trained_workspace)
    version = train_version(catalog, embedder, fast_head())
    assert version["params"]["prediction_key"] == embedder.prediction_key != embedder.key
    assert version["params"]["augmented_views"] == embedder.views
    labels = catalog.current_labels()
    lemon = next(pid for pid, label in labels.items() if label == "Lemon")
    milk = next(pid for pid, label in labels.items() if label == "Arla-Standard-Milk")
    _, milk_vector = catalog.embeddings(embedder.prediction_key, [milk])
    _, lemon_vector = catalog.embeddings(embedder.prediction_key, [lemon])
    try:
        # The lemon's prediction vector swapped for the milk's: its prediction must follow.
        catalog.store_embeddings(embedder.prediction_key, [lemon], milk_vector)
        predict_catalog(catalog, version, product_ids=[lemon])
        assert catalog.predictions(version["id"])[lemon]["label"] == "Arla-Standard-Milk"
    finally:
        catalog.store_embeddings(embedder.prediction_key, [lemon], lemon_vector)
    predict_catalog(catalog, version, product_ids=[lemon])
    assert catalog.predictions(version["id"])[lemon]["label"] == "Lemon"


def test_retraining_summarises_the_views_without_changing_the_model(trained_workspace, embedder):
    """Views enter as each product's mean plus their cached scatter: the same model as training on
    every view row, and a retrain with unchanged labels reads no view vectors."""
    catalog = Catalog(trained_workspace)
    first = train_version(catalog, embedder, HeadClassifier(), activate=False)
    assert first["params"]["views_summarised"] and embedder.views > 0
    second = train_version(catalog, embedder, HeadClassifier(), activate=False)
    assert second["metrics"]["view_scatter_products_read"] == 0
    labels = catalog.current_labels()
    ids, photos = catalog.embeddings(embedder.key, list(labels))
    views = [catalog.embeddings(embedder.view_key(number), ids.tolist())[1] for number in range(embedder.views)]
    _, means = catalog.embeddings(embedder.prediction_key, ids.tolist())
    on_rows = HeadClassifier().fit(photos, [labels[int(pid)] for pid in ids], augmented_views=views)
    _, summarised = load_version(catalog, second["id"])
    # Stored weights are the ridge solution times each fit's softmax temperature (fitted on
    # different validation vectors): compare directions.
    weights = [head.model_.get_layer("predictions").get_weights()[0] for head in (summarised, on_rows)]
    weights = [matrix / np.linalg.norm(matrix) for matrix in weights]
    np.testing.assert_allclose(weights[0], weights[1], atol=3e-4)  # zero scatter: 3e-2 off
    assert (summarised.predict(means) == on_rows.predict(means)).all()
