"""Export what ProductLens knows, in formats other tools read.

* :func:`export_labels`: one row per product with its current label and the
  active model's prediction (CSV or Parquet, by file extension);
* :func:`export_embeddings`: the cached vectors of one embedding key, as Parquet
  (``product_id``, ``filename``, ``label``, ``embedding``) or as ``.npy`` with a
  ``.ids.csv`` beside it;
* :func:`export_classifier`: backbone + head as one ``.keras`` file that maps raw
  RGB pixels (any size, values 0-255) to category probabilities, built from
  standard Keras layers plus, with ``multi`` pooling, one registered pooling layer:
  ``import core.pooling`` (or pass ``custom_objects``) before
  ``keras.models.load_model``. It averages the photo with its mirror but not with
  random crops, so its probabilities differ slightly from the app's.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from core.catalog import Catalog
from core.training import embedder_for, load_version


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")


def labels_table(catalog: Catalog):
    import pandas as pd

    labels = catalog.current_labels()
    active = catalog.active_model_version()
    predictions = catalog.predictions(active["id"]) if active else {}
    rows = []
    for product in catalog.products():
        prediction = predictions.get(product.id)
        rows.append({
            "product_id": product.id, "filename": product.filename, "sha256": product.sha256,
            "label": labels.get(product.id),
            "predicted_label": prediction["label"] if prediction else None,
            "confidence": prediction["confidence"] if prediction else None,
            "top_labels": json.dumps(prediction["labels"]) if prediction else None,
            "top_probabilities": json.dumps(prediction["probabilities"]) if prediction else None,
            "model_version": active["id"] if prediction else None,
        })
    return pd.DataFrame(rows, columns=["product_id", "filename", "sha256", "label", "predicted_label",
                                       "confidence", "top_labels", "top_probabilities", "model_version"])


def export_labels(catalog: Catalog, path: str | os.PathLike) -> Path:
    path = Path(path)
    table = labels_table(catalog)
    temporary = _atomic_target(path)
    if path.suffix.lower() == ".parquet":
        table.to_parquet(temporary, index=False)
    elif path.suffix.lower() == ".csv":
        table.to_csv(temporary, index=False)
    else:
        raise ValueError(f"labels export must end in .csv or .parquet, got {path.name}")
    os.replace(temporary, path)
    return path


def export_embeddings(catalog: Catalog, path: str | os.PathLike, embedding_key: str) -> Path:
    import pandas as pd

    path = Path(path)
    ids, vectors = catalog.embeddings(embedding_key)
    if len(ids) == 0:
        raise ValueError(f"no embeddings under '{embedding_key}': run `embed` first")
    products = {product.id: product for product in catalog.products(ids.tolist())}
    labels = catalog.current_labels()
    temporary = _atomic_target(path)
    if path.suffix.lower() == ".npy":
        with open(temporary, "wb") as handle:
            np.save(handle, vectors.astype(np.float32))
        os.replace(temporary, path)
        pd.DataFrame({"product_id": ids, "filename": [products[int(i)].filename for i in ids],
                      "label": [labels.get(int(i)) for i in ids]}).to_csv(path.with_suffix(".ids.csv"), index=False)
    elif path.suffix.lower() == ".parquet":
        pd.DataFrame({
            "product_id": ids, "filename": [products[int(i)].filename for i in ids],
            "label": [labels.get(int(i)) for i in ids], "embedding": list(vectors.astype(np.float32)),
        }).to_parquet(temporary, index=False)
        os.replace(temporary, path)
    else:
        raise ValueError(f"embeddings export must end in .parquet or .npy, got {path.name}")
    return path


def build_classifier(catalog: Catalog, version: dict | int | None = None):
    """Backbone + head as one Keras model: raw pixels (any size) -> probabilities."""
    import keras
    from keras import layers

    version, head = load_version(catalog, version)
    embedder = embedder_for(version)
    size = embedder.image_size
    feature_model = embedder.model
    inputs = keras.Input(shape=(None, None, 3), name="image")
    pixels = layers.Resizing(size, size, interpolation="bilinear", name="resize")(inputs)
    features = feature_model(pixels, training=False)
    if embedder.flip_tta:
        # Horizontal flip as a fixed anti-diagonal matrix over the width axis, so the
        # saved file uses standard layers only.
        flip = layers.Dense(size, use_bias=False, trainable=False, name="flip_matrix")
        moved = layers.Permute((1, 3, 2), name="width_last")(pixels)
        flipped = layers.Permute((1, 3, 2), name="width_back")(flip(moved))
        flip.set_weights([np.eye(size, dtype="float32")[::-1].copy()])
        mirrored = feature_model(flipped, training=False)
        features = layers.Average(name="flip_average")([features, mirrored])
    probabilities = head.model_(features)
    return keras.Model(inputs, probabilities, name="productlens_classifier"), version


def export_classifier(catalog: Catalog, path: str | os.PathLike, version: dict | int | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"classifier export must end in .keras, got {path.name}")
    model, version = build_classifier(catalog, version)
    temporary = _atomic_target(path)
    model.save(temporary)
    os.replace(temporary, path)
    path.with_suffix(".classes.json").write_text(json.dumps(
        {"classes": version["classes"], "model_version": version["id"], "input": "RGB pixels 0-255, any size"},
        indent=2))
    return path
