"""2-D maps of the catalogue's features (UMAP), cached on disk.

:func:`umap_projection` embeds the feature vectors of a set of products into the
plane with umap-learn (cosine metric, the natural one for CNN features). The
result is cached in ``workspace/cache/`` under a hash of the product ids, the
embedding key and the UMAP parameters, so reopening the Explore page is
instant; numba's compiled kernels are cached too (``NUMBA_CACHE_DIR``), so a
fresh process does not recompile them. Up to ``EXACT_NEIGHBOURS_UP_TO`` products
the cosine k-nearest-neighbour graph UMAP starts from is computed exactly with
one blocked matrix product (faster than UMAP's approximate NN-descent at that
size, and exact).
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

from core import settings
from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import Catalog

os.environ.setdefault("NUMBA_CACHE_DIR", str(settings.cache_dir() / "numba"))
EXACT_NEIGHBOURS_UP_TO = 20_000
# Importing umap-learn patches numba's decorators for a moment: one importer at a time, and
# nobody may see the module half-initialised (a map requested while the warm-up imports it waits).
_IMPORT_LOCK = threading.Lock()
# One computation per map: Explore, opened while the map is drawn ahead, waits for it instead of
# drawing it a second time.
_MAP_LOCKS: dict[str, threading.Lock] = {}
_MAP_LOCKS_GUARD = threading.Lock()


def _import_umap():
    """Import umap-learn with numba's on-disk cache switched on for all its kernels.

    umap-learn and pynndescent mark only some kernels ``cache=True``; the rest
    were recompiled in every new process, seconds before the first map (the
    fresh-process row of ``benchmarks/speed.py``).
    Defaulting ``cache=True`` while they are imported makes numba keep every
    compiled kernel in ``NUMBA_CACHE_DIR``; kernels numba cannot cache still work,
    they are just compiled as before.
    """
    import sys

    with _IMPORT_LOCK:
        if "umap" not in sys.modules or not hasattr(sys.modules["umap"], "UMAP"):
            _patched_import()
        return sys.modules["umap"]


def _patched_import() -> None:
    import sys
    import warnings

    import numba

    originals = numba.njit, numba.jit

    def cached(decorator):
        def decorate(*args, **kwargs):
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return decorate

    numba.njit, numba.jit = cached(originals[0]), cached(originals[1])
    # ParametricUMAP (never used here) would import TensorFlow: ~4 s in a fresh CLI process.
    blocked = "umap.parametric_umap" not in sys.modules
    if blocked:
        sys.modules["umap.parametric_umap"] = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)
            import umap  # noqa: F401
    finally:
        numba.njit, numba.jit = originals
        if blocked:
            del sys.modules["umap.parametric_umap"]


def _warm_marker():
    """A file in numba's cache saying this umap-learn + numba pair has compiled its kernels there."""
    from importlib.metadata import version
    from pathlib import Path

    return Path(os.environ["NUMBA_CACHE_DIR"]) / f"productlens-warm-umap{version('umap-learn')}-numba{version('numba')}"


def warm_up_needed() -> bool:
    """True until :func:`warm_up` has filled numba's disk cache on this machine (for these versions)."""
    return not _warm_marker().exists()


def warm_up() -> float:
    """Compile UMAP's kernels (or load them from numba's disk cache) on a tiny map; return the seconds.

    On a machine that has never drawn a map this takes far longer than drawing a small
    catalogue's map; the app runs it in a background thread when its server starts, so
    the first Explore visit does not pay for it. Once the disk cache holds the kernels it
    is not needed: a map then only loads them.
    """
    import time

    started = time.perf_counter()
    project(np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32))
    marker = _warm_marker()
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache: warming up again next time is the only cost
        pass
    return time.perf_counter() - started


def exact_neighbours(features: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, cosine distances)``, each ``(n, k)``, every row starting with the product itself."""
    vectors = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    n = len(vectors)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        scores = vectors[start:start + block] @ vectors.T
        rows = np.arange(len(scores))
        scores[rows, start + rows] = np.inf  # itself first, even among exact duplicates
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        indices[start:start + block] = top
        similarity = np.take_along_axis(scores, top, axis=1)
        similarity[:, 0] = 1.0
        distances[start:start + block] = np.clip(1.0 - similarity, 0.0, 2.0)
    return indices, distances


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
    import warnings

    umap = _import_umap()
    n_neighbors = int(max(2, min(n_neighbors, n - 1)))
    precomputed = (*exact_neighbours(features, n_neighbors), None) if n <= EXACT_NEIGHBOURS_UP_TO else None
    # 200 optimisation epochs (UMAP's own choice above 10,000 points) instead of 500 below it:
    # less than half the time for the same clusters.
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=float(min_dist), metric="cosine", random_state=seed,
                        n_epochs=200,
                        n_components=2, init="spectral" if n > 10 else "random",
                        precomputed_knn=precomputed or (None, None, None))
    with warnings.catch_warnings():
        # Without a search index UMAP cannot transform new points later: the map never does.
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*")
        return reducer.fit_transform(features).astype(np.float32)


def umap_projection(catalog: Catalog, embedding_key: str, n_neighbors: int = 15, min_dist: float = 0.1,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(product_ids, coordinates)`` for every product embedded under ``embedding_key``."""
    ids, features = catalog.embeddings(embedding_key)
    cache = _cache_file(catalog, embedding_key, ids, n_neighbors, min_dist, seed)
    with _MAP_LOCKS_GUARD:
        lock = _MAP_LOCKS.setdefault(str(cache), threading.Lock())
    with lock:
        coordinates = _cached_map(cache, len(ids))
        if coordinates is None:
            coordinates = project(features, n_neighbors, min_dist, seed)
            import io

            buffer = io.BytesIO()
            np.save(buffer, coordinates)
            atomic_write_bytes(cache, buffer.getvalue())
    return ids, coordinates


def _cached_map(cache, count: int) -> np.ndarray | None:
    if cache.exists():
        try:
            coordinates = np.load(cache)
            if coordinates.shape == (count, 2):
                return coordinates
        except (OSError, ValueError):
            pass
    return None


def catalogue_map(catalog: Catalog, embedding_key: str, n_neighbors: int = 15, min_dist: float = 0.1):
    """A table for the Explore page: UMAP ``x``, ``y`` plus each product's label and prediction.

    ``agreement`` is ``right``/``wrong`` for labelled products with a prediction,
    else ``unlabelled`` or ``no prediction``.
    """
    from core.curation.review import UNLABELLED, review_table

    ids, coordinates = umap_projection(catalog, embedding_key, n_neighbors, min_dist)
    table = review_table(catalog).set_index("product_id").reindex(ids).reset_index()
    table["x"], table["y"] = coordinates[:, 0], coordinates[:, 1]
    has_label, has_prediction = table["label"].notna(), table["predicted_label"].notna()
    table["agreement"] = np.where(~has_prediction, "no prediction", np.where(
        ~has_label, "unlabelled", np.where(table["label"] == table["predicted_label"], "right", "wrong")))
    table["label"] = table["label"].fillna(UNLABELLED)
    table["predicted_label"] = table["predicted_label"].fillna("(none)")
    return table
