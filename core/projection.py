"""2-D maps of the catalogue's features (UMAP), cached on disk.

:func:`umap_projection` embeds the feature vectors of a set of products into the
plane with umap-learn (cosine metric, the natural one for CNN features). The
result is cached in ``workspace/cache/`` under a hash of the product ids, the
embedding key and the UMAP parameters, so reopening the Explore page is
instant; numba's compiled kernels are cached too (``NUMBA_CACHE_DIR``), so a
fresh process does not recompile them.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from core import config
from core.catalog import Catalog, atomic_write_bytes

os.environ.setdefault("NUMBA_CACHE_DIR", str(config.cache_dir() / "numba"))


def _cache_file(catalog: Catalog, key: str, ids: np.ndarray, n_neighbors: int, min_dist: float, seed: int):
    digest = hashlib.sha256()
    digest.update(f"{key}|{n_neighbors}|{min_dist}|{seed}|".encode())
    digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return catalog.workspace / "cache" / f"umap-{digest.hexdigest()[:24]}.npy"


def project(features: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """``(n, d)`` features -> ``(n, 2)`` coordinates. Tiny sets get a trivial layout."""
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 4:
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    import umap

    reducer = umap.UMAP(n_neighbors=int(max(2, min(n_neighbors, n - 1))), min_dist=float(min_dist),
                        metric="cosine", random_state=seed, n_components=2,
                        init="spectral" if n > 10 else "random")
    return reducer.fit_transform(features).astype(np.float32)


def umap_projection(catalog: Catalog, embedding_key: str, n_neighbors: int = 15, min_dist: float = 0.1,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(product_ids, coordinates)`` for every product embedded under ``embedding_key``."""
    ids, features = catalog.embeddings(embedding_key)
    cache = _cache_file(catalog, embedding_key, ids, n_neighbors, min_dist, seed)
    if cache.exists():
        try:
            coordinates = np.load(cache)
            if coordinates.shape == (len(ids), 2):
                return ids, coordinates
        except (OSError, ValueError):
            pass
    coordinates = project(features, n_neighbors, min_dist, seed)
    import io

    buffer = io.BytesIO()
    np.save(buffer, coordinates)
    atomic_write_bytes(cache, buffer.getvalue())
    return ids, coordinates


def catalogue_map(catalog: Catalog, embedding_key: str, n_neighbors: int = 15, min_dist: float = 0.1):
    """A table for the Explore page: UMAP ``x``, ``y`` plus each product's label and prediction.

    ``agreement`` is ``right``/``wrong`` for labelled products with a prediction,
    else ``unlabelled`` or ``no prediction``.
    """
    from core.review import review_table

    ids, coordinates = umap_projection(catalog, embedding_key, n_neighbors, min_dist)
    table = review_table(catalog).set_index("product_id").reindex(ids).reset_index()
    table["x"], table["y"] = coordinates[:, 0], coordinates[:, 1]
    has_label, has_prediction = table["label"].notna(), table["predicted_label"].notna()
    table["agreement"] = np.where(~has_prediction, "no prediction", np.where(
        ~has_label, "unlabelled", np.where(table["label"] == table["predicted_label"], "right", "wrong")))
    table["label"] = table["label"].fillna("(unlabelled)")
    table["predicted_label"] = table["predicted_label"].fillna("(none)")
    return table
