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

Above ``MAP_SAMPLE`` products the map is fitted once on a random sample of that
many and every other product is *placed*: at the similarity-weighted mean of its
nearest sampled products, found in a PCA reduction fitted on the sample
(:class:`SampledMap`). The fitted sample and every placed product are kept in the
cache, so products that arrive later are placed without drawing the map again and
a rerun reads two small files; the map is fitted afresh only when the catalogue
has more than doubled since (the sample would no longer stand for it).
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

from core import settings
from core._internal.read_ahead import read_ahead
from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import Catalog

os.environ.setdefault("NUMBA_CACHE_DIR", str(settings.cache_dir() / "numba"))
EXACT_NEIGHBOURS_UP_TO = 20_000
# UMAP is fitted on at most this many products; beyond, the rest are placed beside their nearest fitted ones.
MAP_SAMPLE = EXACT_NEIGHBOURS_UP_TO
# Products are placed by an exact search among at most this many fitted ones, above by an HNSW graph.
EXACT_PLACEMENT_UP_TO = 5_000
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


class SampledMap:
    """A UMAP map fitted on a sample, onto which any product can be placed (see the module docstring).

    ``fit(ids, features)`` draws the map of those products and learns a ``dimensions``-d PCA of them;
    ``place(features)`` puts new products at the weighted mean of their ``neighbours`` nearest fitted
    products (cosine similarity in the reduced space, weights growing sharply with it, so a copy of a
    fitted product lands on it), found exactly among up to ``exact_search_up_to`` fitted products and
    by an HNSW graph above.
    """

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, dimensions: int = 64,
                 neighbours: int = 10, exact_search_up_to: int = EXACT_PLACEMENT_UP_TO):
        self.n_neighbors, self.min_dist, self.seed = n_neighbors, min_dist, seed
        self.dimensions, self.neighbours, self.exact_search_up_to = dimensions, neighbours, exact_search_up_to

    def fit(self, ids: np.ndarray, features: np.ndarray) -> "SampledMap":
        features = np.asarray(features, dtype=np.float32)
        if len(features) < 2:
            raise ValueError(f"a map needs at least 2 products, got {len(features)}")
        self.ids_ = np.asarray(ids, dtype=np.int64)
        self.coordinates_ = project(features, self.n_neighbors, self.min_dist, self.seed)
        self.mean_ = features.mean(axis=0)
        # The top principal directions from the sample's Gram matrix: one (n, n) or (d, d) eigenproblem.
        centred = features - self.mean_
        dimensions = min(self.dimensions, *centred.shape)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        self.components_ = np.ascontiguousarray(vectors[:, ::-1][:, :dimensions].T, dtype=np.float32)
        self.reduced_ = self._reduce(features)
        return self

    def _reduce(self, features: np.ndarray) -> np.ndarray:
        reduced = (np.asarray(features, np.float32) - self.mean_) @ self.components_.T
        return reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)

    def place(self, features: np.ndarray) -> np.ndarray:
        """``(n, 2)`` coordinates for ``features`` on the fitted map."""
        if not hasattr(self, "coordinates_"):
            raise ValueError("this SampledMap is not fitted yet: call fit(ids, features) first")
        if len(features) == 0:
            return np.zeros((0, 2), np.float32)
        closeness, nearest = self._search().search(np.ascontiguousarray(self._reduce(features), dtype=np.float32),
                                                   min(self.neighbours, len(self.reduced_)))
        weights = np.exp((closeness - closeness.max(axis=1, keepdims=True)) / 0.02)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkc->nc", weights, self.coordinates_[nearest]).astype(np.float32)

    def _search(self):
        """The fitted products' reduced vectors in a faiss index, built on first use and kept.

        Up to ``exact_search_up_to`` fitted products an exact search; above, an HNSW graph,
        which finds the same nearest fitted products five times faster (a million products are
        placed against the whole sample).
        """
        if getattr(self, "_index", None) is None:
            import faiss

            dimensions = self.reduced_.shape[1]
            if len(self.reduced_) <= self.exact_search_up_to:
                index = faiss.IndexFlatIP(dimensions)
            else:
                index = faiss.IndexHNSWFlat(dimensions, 16, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = 64
            index.add(np.ascontiguousarray(self.reduced_, dtype=np.float32))
            self._index = index
        return self._index

    def state(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids_, "coordinates": self.coordinates_, "mean": self.mean_,
                "components": self.components_, "reduced": self.reduced_}

    @classmethod
    def from_state(cls, state, **settings) -> "SampledMap":
        fitted = cls(**settings)
        fitted.ids_, fitted.coordinates_ = state["ids"], state["coordinates"]
        fitted.mean_, fitted.components_, fitted.reduced_ = state["mean"], state["components"], state["reduced"]
        return fitted


def umap_projection(catalog: Catalog, embedding_key: str, n_neighbors: int = 15, min_dist: float = 0.1,
                    seed: int = 0, sample: int | None = None, chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """``(product_ids, coordinates)`` for every product embedded under ``embedding_key``.

    Up to ``sample`` products (default :data:`MAP_SAMPLE`) UMAP maps them all; above, a
    :class:`SampledMap` fitted on ``sample`` of them places the rest, reading ``chunk`` vectors at a time.
    """
    sample = MAP_SAMPLE if sample is None else int(sample)
    if catalog.count_embeddings(embedding_key) > sample:
        return _sampled_projection(catalog, embedding_key, n_neighbors, min_dist, seed, sample, chunk)
    ids, features = catalog.embeddings(embedding_key)
    cache = _cache_file(catalog, embedding_key, ids, n_neighbors, min_dist, seed)
    with _map_lock(cache):
        coordinates = _cached_map(cache, len(ids))
        if coordinates is None:
            coordinates = project(features, n_neighbors, min_dist, seed)
            _save(cache, coordinates)
    return ids, coordinates


def _map_lock(cache) -> threading.Lock:
    with _MAP_LOCKS_GUARD:
        return _MAP_LOCKS.setdefault(str(cache), threading.Lock())


def _save(path, array: np.ndarray | None = None, **arrays) -> None:
    """One array as ``.npy`` (a small catalogue's map), or named arrays as ``.npz``; replaced atomically."""
    import io

    buffer = io.BytesIO()
    if array is not None:
        np.save(buffer, array)
    else:
        np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path) -> dict | None:
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged: drawn again


def _sampled_projection(catalog: Catalog, embedding_key: str, n_neighbors: int, min_dist: float, seed: int,
                        sample: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(catalog.embedded_product_ids(embedding_key), dtype=np.int64)
    digest = hashlib.sha256(f"{embedding_key}|{n_neighbors}|{min_dist}|{seed}|{sample}".encode()).hexdigest()[:24]
    fitted_file = catalog.workspace / "cache" / f"umap-sampled-{digest}.npz"
    placed_file = catalog.workspace / "cache" / f"umap-placed-{digest}.npz"
    settings = {"n_neighbors": n_neighbors, "min_dist": min_dist, "seed": seed}
    with _map_lock(fitted_file):
        fitted_state, placed = _load(fitted_file), _load(placed_file)
        refit = fitted_state is None or placed is None or 2 * int(fitted_state["catalogue_size"]) < len(ids)
        if refit:
            # (The count that chose this path includes archived products: fewer may be live.)
            chosen = np.sort(np.random.default_rng(seed).choice(ids, size=min(sample, len(ids)), replace=False))
            fitted = SampledMap(**settings).fit(*catalog.embeddings(embedding_key, chosen.tolist()))
            _save(fitted_file, catalogue_size=np.int64(len(ids)), **fitted.state())
            placed = {"ids": fitted.ids_, "coordinates": fitted.coordinates_}
        else:
            fitted = SampledMap.from_state(fitted_state, **settings)
        known = np.isin(ids, placed["ids"])
        missing = ids[~known]
        new_ids, new_coordinates = [placed["ids"]], [placed["coordinates"]]

        def read(start):
            return catalog.embeddings(embedding_key, missing[start:start + chunk].tolist(), dtype=np.float16)

        # The next chunk is read from the database while this one is placed.
        for _, (chunk_ids, features) in read_ahead(range(0, len(missing), chunk), read, finish=catalog.close):
            new_ids.append(chunk_ids)
            new_coordinates.append(fitted.place(features))
        all_ids, all_coordinates = np.concatenate(new_ids), np.concatenate(new_coordinates)
        if refit or len(missing):
            _save(placed_file, ids=all_ids, coordinates=all_coordinates)
    # Archived products keep their place in the file (they may come back) but leave the map.
    order = np.argsort(all_ids, kind="stable")
    rows = order[np.searchsorted(all_ids, ids, sorter=order)]
    return ids, all_coordinates[rows]


def _cached_map(cache, count: int) -> np.ndarray | None:
    if cache.exists():
        try:
            coordinates = np.load(cache)
            if coordinates.shape == (count, 2):
                return coordinates
        except (OSError, ValueError):
            pass
    return None


def catalogue_map(catalog: Catalog, embedding_key: str, n_neighbors: int = 15, min_dist: float = 0.1,
                  shown: int | None = None):
    """A table for the Explore page: UMAP ``x``, ``y`` plus each product's label and prediction.

    ``agreement`` is ``right``/``wrong`` for labelled products with a prediction,
    else ``unlabelled`` or ``no prediction``. With ``shown``, at most that many
    products (the same random ones on every call while the catalogue is unchanged)
    and only their rows are read; ``table.attrs["products"]`` is how many the map holds.
    """
    from core.curation.review import UNLABELLED, review_table

    ids, coordinates = umap_projection(catalog, embedding_key, n_neighbors, min_dist)
    if shown is not None and len(ids) > shown:
        rows = np.sort(np.random.default_rng(len(ids)).choice(len(ids), size=shown, replace=False))
        drawn, drawn_coordinates = ids[rows], coordinates[rows]
        table = review_table(catalog, product_ids=drawn.tolist())
    else:
        drawn, drawn_coordinates = ids, coordinates
        table = review_table(catalog)
    table = table.set_index("product_id").reindex(drawn).reset_index()
    table["x"], table["y"] = drawn_coordinates[:, 0], drawn_coordinates[:, 1]
    has_label, has_prediction = table["label"].notna(), table["predicted_label"].notna()
    table["agreement"] = np.where(~has_prediction, "no prediction", np.where(
        ~has_label, "unlabelled", np.where(table["label"] == table["predicted_label"], "right", "wrong")))
    table["label"] = table["label"].fillna(UNLABELLED)
    table["predicted_label"] = table["predicted_label"].fillna("(none)")
    table.attrs["products"] = len(ids)
    return table
