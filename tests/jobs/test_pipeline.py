import io
import zipfile

from conftest import demo_photos
from core.curation.projection import catalogue_map, umap_projection
from core.jobs.pipeline import import_and_predict, retrain_and_predict
from core.model.head import HeadClassifier
from core.model.metrics import compare_versions
from core.storage.catalog import Catalog
from core.storage.demo import load_demo
from core.storage.thumbnails import thumbnail


def test_demo_then_retrain_then_upload_gets_predictions(workspace, embedder):
    catalog = Catalog(workspace)
    report = load_demo(catalog)
    assert len(report.added) == 80 and report.labelled == 70
    fractions = []
    version = retrain_and_predict(catalog, embedder, HeadClassifier(), augmented_views=1,
                                  progress=lambda fraction, message: fractions.append(fraction))
    assert fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)
    assert len(catalog.predictions(version.id)) == 80

    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("new/lemon.png", _as_png(demo_photos("Lemon")[0]))
        archive.writestr("new/broken.jpg", b"not a photo")
    files = [("banana.jpg", demo_photos("Banana")[0].read_bytes()), ("batch.zip", upload.getvalue()),
             ("notes.jpg", b"hello")]
    result = import_and_predict(catalog, files, embedder)
    assert len(result.report.duplicates) == 1  # the banana is a demo photo already
    assert len(result.report.added) == 1  # the PNG re-encode is a new product
    assert sorted(r.name for r in result.report.rejected) == ["batch.zip:new/broken.jpg", "notes.jpg"]
    assert result.predicted == 2
    predictions = catalog.predictions(version.id)
    assert all(pid in predictions for pid in result.product_ids)
    assert {catalog.get_product(pid).filename for pid in result.report.added} == {"lemon.png"}

    # The active model's file is deleted behind ProductLens's back: an upload still imports, and says why
    # it could not predict, instead of failing.
    (workspace / version.path).unlink()
    later = import_and_predict(catalog, [("orange.png", _as_png(demo_photos("Orange")[0]))], embedder)
    assert len(later.report.added) == 1 and later.predicted == 0
    assert "is missing: activate another version" in later.prediction_error


def test_an_upload_is_predicted_by_a_model_trained_before_the_default_features_changed(workspace, embedder):
    """A model trained on other features than today's default (here: with the mirror pass, the default until
    stop 28) still predicts an upload, from its own features; its retrain then moves to the default's."""
    from core.features.embeddings import Embedder

    catalog = Catalog(workspace)
    load_demo(catalog)
    older = Embedder(backbone=embedder.backbone, flip_tta=True)
    assert older.flip_tta and not embedder.flip_tta and older.key != embedder.key
    version = retrain_and_predict(catalog, older, HeadClassifier(), augmented_views=1)
    result = import_and_predict(catalog, [("orange.png", _as_png(demo_photos("Orange")[0]))], embedder)
    (new,) = result.report.added
    assert result.predicted == 1 and result.prediction_error is None
    assert new in catalog.predictions(version.id)
    assert len(catalog.embeddings(older.key, [new])[0]) == 1, "features of the active model's own kind"
    retrained = retrain_and_predict(catalog, embedder, HeadClassifier(), augmented_views=1)
    assert retrained.embedding_key == embedder.key and len(catalog.predictions(retrained.id)) == 81


def _as_png(path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_map_and_thumbnails(workspace, embedder, demo_dir):
    catalog = Catalog(workspace)
    load_demo(catalog)
    from core.features.embeddings import embed_catalog
    embed_catalog(catalog, embedder)
    ids, coordinates = umap_projection(catalog, embedder.key, n_neighbors=10)
    assert coordinates.shape == (80, 2)
    cached = list((catalog.workspace / "cache").glob("umap-*.npy"))
    assert len(cached) == 1
    again_ids, again = umap_projection(catalog, embedder.key, n_neighbors=10)
    assert (again == coordinates).all()
    table = catalogue_map(catalog, embedder.key, n_neighbors=10)
    assert set(table["agreement"]) == {"no prediction"} and len(table) == 80
    # Photos of one category sit closer together on the map than photos of different ones.
    labelled = table[table["label"] != "(unlabelled)"]
    centres = labelled.groupby("label")[["x", "y"]].mean()
    spread = labelled.groupby("label")[["x", "y"]].std().mean().mean()
    assert centres.std().mean() > spread
    path = thumbnail(catalog, ids[0].item())
    assert path.exists() and path.stat().st_size < 40_000
    assert thumbnail(catalog, ids[0].item()) == path


def test_compare_versions_orders_by_change():
    before = {"per_class": {"a": {"recall": 0.5, "support": 2}, "b": {"recall": 0.9, "support": 2}}}
    after = {"per_class": {"a": {"recall": 1.0, "support": 2}, "b": {"recall": 0.8, "support": 2},
                           "c": {"recall": 0.7, "support": 3}, "d": {"recall": 0.0, "support": 0}}}
    rows = compare_versions(before, after)
    assert [r["category"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["change"] == 0.5 and rows[2]["before"] is None
