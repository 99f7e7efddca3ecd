"""Predict the category of products with a trained head.

Predictions are stored per model version as the top-k categories and their
probabilities (best first), so the app can show the runners-up and compare
versions. Only cached embeddings are used: embed first (see
:mod:`core.features.embeddings`); a version trained with prediction views predicts from
each photo's vector averaged with its views' (test-time augmentation). Each
prediction also says whether the product looks like nothing labelled (a "new
category?", see :mod:`core.model.novelty`).
"""

from __future__ import annotations

import zipfile
from typing import Sequence

import numpy as np

from core._internal.read_ahead import read_ahead
from core.model.novelty import NoveltyDetector
from core.model.training import load_version, novelty_path
from core.storage.catalog import Catalog, ModelVersion


def predict_catalog(catalog: Catalog, version: ModelVersion | int | None = None, top_k: int = 5,
                    product_ids: Sequence[int] | None = None, chunk_size: int = 10_000) -> dict:
    """Predict every embedded product (or ``product_ids``); return counts and the version used.

    Vectors are read ``chunk_size`` products at a time, so memory stays bounded whatever the
    catalogue's size.
    """
    version, head = load_version(catalog, version)
    # An upload's products are asked for by id (chunks skip those without vectors); otherwise every live one.
    embedded = (catalog.embedded_product_ids(version.prediction_key) if product_ids is None
                else sorted({int(pid) for pid in product_ids}))
    detector = _novelty(catalog, version)
    # A product someone filed is not a "new category?", whatever it looks like.
    labelled = set(catalog.labelled_product_ids()) if detector is not None else set()
    predicted = 0
    # Versions before stop 30 judged each photo's own vector, read beside the prediction vectors.
    judges_photos = detector is not None and version.params.get("novelty_vectors") != "prediction"
    for ids, features, (photo_ids, photos) in _chunks(catalog, version, embedded, chunk_size, judges_photos):
        labels, probabilities = head.top_k(features, top_k)
        new = None
        if detector is not None:
            if not judges_photos:
                photo_ids, photos = ids, features
            # The head's confidence in each product, beside how far its vector is from every category.
            confidence = dict(zip(ids.tolist(), probabilities[:, 0].tolist()))
            flagged = dict(zip(photo_ids.tolist(), detector.is_new(
                photos, np.array([confidence[pid] for pid in photo_ids.tolist()])).tolist()))
            new = [None if pid not in flagged else flagged[pid] and pid not in labelled for pid in ids.tolist()]
        catalog.store_predictions(version.id, ids, labels, probabilities, new)
        predicted += len(ids)
    missing = (catalog.count_products() if product_ids is None else len(set(product_ids))) - predicted
    return {"model_version": version.id, "predicted": int(predicted), "not_embedded": int(missing)}


def _chunks(catalog: Catalog, version: ModelVersion, product_ids: list[int], chunk_size: int, photos: bool):
    """Per chunk of ``product_ids``: ``(ids, prediction vectors, (photo ids, photo vectors))``, the next chunk
    read while this one is predicted and stored."""
    def read(start):
        ids, features = catalog.embeddings(version.prediction_key, product_ids[start:start + chunk_size])
        return ids, features, (catalog.embeddings(version.embedding_key, ids.tolist()) if photos else (None, None))

    for _, chunk in read_ahead(range(0, len(product_ids), chunk_size), read, finish=catalog.close):
        yield chunk


def _novelty(catalog: Catalog, version: ModelVersion) -> NoveltyDetector | None:
    """The version's "new category?" detector (None: a version trained before it was kept beside the head,
    or from reference photos; or its file is unreadable, which costs the flags, not the predictions)."""
    path = novelty_path(catalog.model_path(version))
    if not path.is_file():
        return None
    try:
        return NoveltyDetector.load(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
