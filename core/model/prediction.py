"""Predict the category of products with a trained head.

Predictions are stored per model version as the top-k categories and their
probabilities (best first), so the app can show the runners-up and compare
versions. Only cached embeddings are used: embed first (see
:mod:`core.features.embeddings`); a version trained with prediction views predicts from
each photo's vector averaged with its views' (test-time augmentation).
"""

from __future__ import annotations

from typing import Sequence

from core.model.training import load_version
from core.storage.catalog import Catalog, ModelVersion


def predict_catalog(catalog: Catalog, version: ModelVersion | int | None = None, top_k: int = 5,
                    product_ids: Sequence[int] | None = None, chunk_size: int = 10_000) -> dict:
    """Predict every embedded product (or ``product_ids``); return counts and the version used."""
    version, head = load_version(catalog, version)
    ids, features = catalog.embeddings(version.prediction_key, product_ids)
    for start in range(0, len(ids), chunk_size):
        labels, probabilities = head.top_k(features[start:start + chunk_size], top_k)
        catalog.store_predictions(version.id, ids[start:start + chunk_size], labels, probabilities)
    missing = (catalog.count_products() if product_ids is None else len(set(product_ids))) - len(ids)
    return {"model_version": version.id, "predicted": int(len(ids)), "not_embedded": int(missing)}

