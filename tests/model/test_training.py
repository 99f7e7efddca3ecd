import os
from pathlib import Path

import numpy as np
import pytest

from core.errors import TrainingError
from core.features.embeddings import embed_catalog
from core.model.head import HeadClassifier
from core.model.prediction import predict_catalog
from core.model.training import activate, load_version, train_version
from core.storage import ingest
from core.storage.catalog import Catalog


@pytest.fixture(scope="module")
def trained_workspace(tmp_path_factory, demo_split, embedder):
    """The demo catalogue: 6 labelled photos per category, 2 more per category unlabelled (held out)."""
    train, test = demo_split
    workspace = tmp_path_factory.mktemp("trained")
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [train])
    ingest.import_paths(catalog, sorted(test.rglob("*.jpg")))
    embed_catalog(catalog, embedder)
    return workspace


def test_train_stores_an_active_version_with_metrics(trained_workspace, embedder):
    catalog = Catalog(trained_workspace)
    version = train_version(catalog, embedder, HeadClassifier())
    assert version.is_active and len(version.classes) == 10
    metrics = version.metrics
    assert metrics["n_train"] == 60
    matrix = np.array(metrics["confusion_matrix"])
    assert metrics["n"] == matrix.sum() > 0 and metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert set(metrics["per_class"]) == set(version.classes)
    assert (catalog.workspace / version.path).is_file()
    result = predict_catalog(catalog)
    assert result["predicted"] == 80
    predictions = catalog.predictions(version.id)
    # The 20 held-out photos: never labelled, so never seen in training.
    held_out = {product.id: Path(product.source).parent.name for product in catalog.products()
                if product.id not in catalog.current_labels()}
    assert len(held_out) == 20
    right = sum(predictions[pid]["label"] == truth for pid, truth in held_out.items())
    assert right >= 17, f"{right} of 20 held-out photos predicted right"
    first = next(iter(predictions.values()))
    assert len(first["labels"]) == 5 and first["probabilities"] == sorted(first["probabilities"], reverse=True)


def test_previous_version_can_be_reactivated(trained_workspace, embedder):
    catalog = Catalog(trained_workspace)
    first = train_version(catalog, embedder, HeadClassifier())
    second = train_version(catalog, embedder, HeadClassifier())
    assert catalog.active_model_version().id == second.id
    activate(catalog, first.id)
    assert catalog.active_model_version().id == first.id
    assert [v.is_active for v in catalog.model_versions()].count(True) == 1
    version, head = load_version(catalog)
    assert version.id == first.id and list(head.classes_) == first.classes


def test_a_crash_while_saving_keeps_the_previous_model(trained_workspace, embedder, monkeypatch):
    catalog = Catalog(trained_workspace)
    good = train_version(catalog, embedder, HeadClassifier())
    models_before = set(os.listdir(catalog.workspace / "models"))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated crash during rename)")

    monkeypatch.setattr("core.model.head.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        train_version(catalog, embedder, HeadClassifier())
    monkeypatch.undo()
    assert catalog.active_model_version().id == good.id
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
    version = train_version(catalog, embedder, HeadClassifier())
    assert version.params["prediction_key"] == embedder.prediction_key != embedder.key
    assert version.params["augmented_views"] == embedder.views
    labels = catalog.current_labels()
    lemon = next(pid for pid, label in labels.items() if label == "Lemon")
    milk = next(pid for pid, label in labels.items() if label == "Arla-Standard-Milk")
    _, milk_vector = catalog.embeddings(embedder.prediction_key, [milk])
    _, lemon_vector = catalog.embeddings(embedder.prediction_key, [lemon])
    try:
        # The lemon's prediction vector swapped for the milk's: its prediction must follow.
        catalog.store_embeddings(embedder.prediction_key, [lemon], milk_vector)
        predict_catalog(catalog, version, product_ids=[lemon])
        assert catalog.predictions(version.id)[lemon]["label"] == "Arla-Standard-Milk"
    finally:
        catalog.store_embeddings(embedder.prediction_key, [lemon], lemon_vector)
    predict_catalog(catalog, version, product_ids=[lemon])
    assert catalog.predictions(version.id)[lemon]["label"] == "Lemon"


def test_retraining_summarises_the_views_without_changing_the_model(trained_workspace, embedder):
    """Views enter as each product's mean plus their cached scatter: the same model as training on
    every view row, and a retrain with unchanged labels reads no view vectors."""
    catalog = Catalog(trained_workspace)
    # Without propagation: the comparison below fits the labelled rows only.
    first = train_version(catalog, embedder, HeadClassifier(), activate=False, propagation_threshold=None)
    assert first.params["views_summarised"] and embedder.views > 0
    second = train_version(catalog, embedder, HeadClassifier(), activate=False, propagation_threshold=None)
    assert second.metrics["view_scatter_products_read"] == 0
    labels = catalog.current_labels()
    ids, photos = catalog.embeddings(embedder.key, list(labels))
    views = [catalog.embeddings(embedder.view_key(number), ids.tolist())[1] for number in range(embedder.views)]
    _, means = catalog.embeddings(embedder.prediction_key, ids.tolist())
    on_rows = HeadClassifier().fit(photos, [labels[int(pid)] for pid in ids], augmented_views=views)
    _, summarised = load_version(catalog, second.id)
    # Stored weights are the ridge solution times each fit's softmax temperature (fitted on
    # different validation vectors): compare directions.
    weights = [head.model_.get_layer("predictions").get_weights()[0] for head in (summarised, on_rows)]
    weights = [matrix / np.linalg.norm(matrix) for matrix in weights]
    np.testing.assert_allclose(weights[0], weights[1], atol=3e-4)  # zero scatter: 3e-2 off
    assert (summarised.predict(means) == on_rows.predict(means)).all()


def test_an_unlabelled_near_identical_shot_trains_with_its_twins_label(tmp_path, embedder, demo_dir):
    import shutil

    from PIL import Image

    from core.model.training import propagated_labels

    catalog = Catalog(tmp_path / "ws")
    for category in ("Banana", "Lemon"):  # a folder of category folders: labelled by folder
        shutil.copytree(demo_dir / category, tmp_path / "photos" / category)
    ingest.import_paths(catalog, [tmp_path / "photos"])
    assert len(catalog.current_labels()) >= 10
    banana = sorted((demo_dir / "Banana").glob("*.jpg"))[0]
    twin = tmp_path / "shelf-photo.jpg"
    Image.open(banana).convert("RGB").save(twin, quality=70)  # the same shot, re-encoded: new bytes
    ingest.import_paths(catalog, [twin], apply_labels=False)
    embed_catalog(catalog, embedder)
    twin_id = next(p.id for p in catalog.products() if p.filename == "shelf-photo.jpg")
    assert twin_id not in catalog.current_labels()

    labels = catalog.current_labels()
    ids, features = catalog.embeddings(embedder.key, list(labels))
    found = propagated_labels(catalog, embedder.key, ids, features,
                              np.array([labels[int(pid)] for pid in ids], dtype=object))
    assert twin_id in found[0].tolist()
    assert found[2][found[0].tolist().index(twin_id)] == "Banana"
    version = train_version(catalog, embedder, HeadClassifier())
    assert version.metrics["n_propagated"] == len(found[0]) >= 1
    assert version.metrics["n_train"] == len(ids), "propagated rows are not counted as labels"
    assert twin_id not in catalog.current_labels(), "nothing is stored as a label"
    off = train_version(catalog, embedder, HeadClassifier(), propagation_threshold=None)
    assert off.metrics["n_propagated"] == 0


def test_a_shot_as_close_to_another_category_takes_no_label():
    from core.model.training import propagation_sources

    rng = np.random.default_rng(0)
    apple, pear = rng.normal(size=(2, 64))
    pear = apple + 0.35 * pear  # two look-alike categories, as apple varieties are
    anchors = np.stack([apple, pear])
    near_apple_only = apple + 0.05 * rng.normal(size=64)
    between = (apple + pear) / 2  # near-identical to both: which label is a coin toss
    candidates = np.stack([near_apple_only, between])
    source, keep = propagation_sources(candidates, anchors, np.array(["Apple", "Pear"], dtype=object),
                                       threshold=0.85, margin=0.05)
    assert source[0] == 0 and keep[0]
    assert not keep[1]
    _, without_margin = propagation_sources(candidates, anchors, np.array(["Apple", "Pear"], dtype=object),
                                            threshold=0.85, margin=0.0)
    assert without_margin[1], "only the margin keeps it out"
    with pytest.raises(ValueError, match="margin"):
        propagation_sources(candidates, anchors, np.array(["Apple", "Pear"]), margin=1.5)


def test_the_demo_model_predicts_its_own_labels_when_shots_are_propagated(tmp_path, embedder):
    """Propagated rows come after the labelled ones but their ids interleave; every per-row vector (views,
    prediction vectors) must follow the rows, not the catalogue's id order, or the head learns garbage."""
    from core.model import predict_catalog
    from core.storage.demo import load_demo

    catalog = Catalog(tmp_path / "ws")
    load_demo(catalog)  # the last photo of each category stays unlabelled: ids interleave
    embed_catalog(catalog, embedder)
    version = train_version(catalog, embedder)
    assert version.metrics["n_propagated"] >= 1 and version.params["views_summarised"]
    predict_catalog(catalog, version)
    predictions, labels = catalog.predictions(version.id), catalog.current_labels()
    assert np.mean([predictions[pid]["label"] == label for pid, label in labels.items()]) >= 0.95
    assert version.metrics["accuracy"] >= 0.8


def test_predicting_in_small_chunks_gives_the_same_predictions(trained_workspace, embedder, monkeypatch):
    catalog = Catalog(trained_workspace)
    version = train_version(catalog, embedder, HeadClassifier(), activate=False)
    predict_catalog(catalog, version)
    whole = catalog.predictions(version.id)
    catalog.archive_products([catalog.product_ids()[0]], reason="duplicate")
    read = []
    original = Catalog.embeddings

    def counted(self, key, ids=None):
        if key == version.prediction_key:  # the vectors predicted from (the novelty check reads labelled ones)
            read.append(None if ids is None else len(ids))
        return original(self, key, ids)

    monkeypatch.setattr(Catalog, "embeddings", counted)
    result = predict_catalog(catalog, version, chunk_size=7)
    assert result["predicted"] == 79 and None not in read and max(read) <= 7, "never every vector at once"
    chunked = catalog.predictions(version.id)
    assert all(chunked[pid]["labels"] == whole[pid]["labels"] for pid in whole)
    np.testing.assert_allclose([chunked[pid]["probabilities"] for pid in whole],
                               [whole[pid]["probabilities"] for pid in whole], atol=1e-6)


def test_above_the_streaming_size_training_reads_vectors_by_chunk_and_fits_the_same_head(trained_workspace, embedder,
                                                                                          monkeypatch):
    from core.model import training
    from core.model.training import novelty_path

    catalog = Catalog(trained_workspace)
    labels = catalog.current_labels()
    live = sorted(set(catalog.embedded_product_ids(embedder.key)) & set(labels))  # (earlier tests archive some)
    ids, vectors = catalog.embeddings(embedder.prediction_key, live)
    expected = HeadClassifier(group_threshold=None).fit(vectors, [labels[int(pid)] for pid in ids])
    asked = []
    reading = Catalog.embeddings

    def spy(self, key, product_ids=None, **options):
        asked.append(None if product_ids is None else len(product_ids))
        return reading(self, key, product_ids, **options)

    monkeypatch.setattr(training, "STREAMED_FROM", 10)
    monkeypatch.setattr(Catalog, "embeddings", spy)
    version = train_version(catalog, embedder, activate=False)
    monkeypatch.undo()
    assert None not in asked, "no read of every vector at once"
    assert version.metrics["streamed"] and version.metrics["n_train"] == len(live) >= 59
    assert version.metrics["n_propagated"] == 0
    assert novelty_path(catalog.model_path(version)).is_file()
    _, head = load_version(catalog, version.id)
    np.testing.assert_allclose(head.predict_proba(vectors), expected.predict_proba(vectors), atol=1e-4)
    assert predict_catalog(catalog, version.id)["predicted"] == len(catalog.embedded_product_ids(embedder.key))
