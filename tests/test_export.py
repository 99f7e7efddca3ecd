import json

import numpy as np
import pandas as pd
import pytest

from conftest import demo_photos
from core import export, ingest
from core.catalog import Catalog
from core.embeddings import embed_catalog
from core.head import HeadClassifier
from core.training import load_version, train_version


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, demo_dir, embedder):
    catalog = Catalog(tmp_path_factory.mktemp("export"))
    for category in ("Lemon", "Banana", "Oatly-Oat-Milk"):
        ingest.import_paths(catalog, [demo_dir / category], label=category)
    embed_catalog(catalog, embedder)
    version = train_version(catalog, embedder, HeadClassifier(max_epochs=30))
    from core.prediction import predict_catalog
    predict_catalog(catalog, version)
    return catalog


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_labels_and_predictions_export(catalog, tmp_path, suffix):
    path = export.export_labels(catalog, tmp_path / f"labels.{suffix}")
    table = pd.read_csv(path) if suffix == "csv" else pd.read_parquet(path)
    assert len(table) == 24
    assert set(table["label"]) == {"Lemon", "Banana", "Oatly-Oat-Milk"}
    assert table["predicted_label"].notna().all() and table["confidence"].between(0, 1).all()
    assert len(json.loads(table["top_labels"].iloc[0])) == 3


def test_embeddings_export(catalog, tmp_path, embedder):
    table = pd.read_parquet(export.export_embeddings(catalog, tmp_path / "emb.parquet", embedder.key))
    assert len(table) == 24 and len(table["embedding"].iloc[0]) == embedder.feature_dim
    vectors = np.load(export.export_embeddings(catalog, tmp_path / "emb.npy", embedder.key))
    ids = pd.read_csv(tmp_path / "emb.ids.csv")
    assert vectors.shape == (24, embedder.feature_dim) and len(ids) == 24
    np.testing.assert_allclose(vectors, np.stack(table["embedding"].to_numpy()))
    with pytest.raises(ValueError, match="embed"):
        export.export_embeddings(catalog, tmp_path / "x.npy", "no-such-key")


def test_classifier_export_is_one_keras_file(catalog, tmp_path, embedder):
    import keras

    from core.pooling import GeneralizedMeanPooling

    path = export.export_classifier(catalog, tmp_path / "classifier.keras")
    # Standard layers plus the one pooling layer ProductLens registers (named explicitly here).
    model = keras.models.load_model(path, custom_objects={"GeneralizedMeanPooling": GeneralizedMeanPooling})
    classes = json.loads(path.with_suffix(".classes.json").read_text())["classes"]
    version, head = load_version(catalog)
    assert classes == version["classes"]
    from core import images
    photo = demo_photos("Banana")[0]
    raw = np.asarray(images.decode(photo), dtype="float32")[None]
    exported = model.predict(raw, verbose=0)[0]
    expected = head.predict_proba(embedder.embed_sources([photo])[0])[0]
    assert classes[int(np.argmax(exported))] == "Banana"
    assert np.abs(exported - expected).max() < 0.05, "export should match the app's pipeline"
