"""Approximate nearest neighbours for big catalogues: an HNSW graph (hnswlib), built once, kept, grown.

Up to :data:`APPROXIMATE_FROM` products, similar products are found exactly
(:class:`~core.curation.similarity.ExactIndex`, one matrix product). Above it,
:class:`ApproximateIndex` answers the same ``fit``/``query`` calls from a
hierarchical navigable small-world graph over cosine similarity: far less work per
query, at a recall measured in ``benchmarks/ann.py``. :func:`persistent_index` keeps
the graph in ``workspace/cache/`` and, when products have arrived since it was saved,
adds only those (reading only their vectors); archived products are marked deleted.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from core.storage.catalog import Catalog

# Exact search answers a query over 50,000 vectors of the default features in tens of
# milliseconds on 2 cores; above that the graph pays for itself (benchmarks/ann.py).
APPROXIMATE_FROM = 50_000
_SAVE_LOCK = threading.Lock()


class ApproximateIndex:
    """Cosine k-NN over ``(id, vector)`` pairs from an HNSW graph; ``add`` grows it, ``save``/``load`` keep it.

    ``m`` (links per node) and ``ef_construction`` trade build time and memory for
    recall; ``ef_search`` (at least ``k`` at query time) trades query time for recall.
    """

    def __init__(self, m: int = 16, ef_construction: int = 100, ef_search: int = 64, seed: int = 0):
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError(f"m must be at least 2 and ef_construction, ef_search at least 1; got {m}, "
                             f"{ef_construction}, {ef_search}")
        self.m, self.ef_construction, self.ef_search, self.seed = int(m), int(ef_construction), int(ef_search), seed

    def fit(self, ids: Sequence[int], vectors: np.ndarray) -> "ApproximateIndex":
        import hnswlib

        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors) or vectors.ndim != 2:
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors (expected a 2-d array)")
        self.index_ = hnswlib.Index(space="cosine", dim=int(vectors.shape[1]))
        self.index_.init_index(max_elements=max(1, len(ids)), ef_construction=self.ef_construction, M=self.m,
                               random_seed=self.seed)
        self.deleted_: set[int] = set()
        self.add(ids, vectors)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("index is empty: call fit() first")

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Add products (an id already present gets the new vector)."""
        self._check_fitted()
        if len(ids) == 0:
            return
        needed = self.index_.get_current_count() + len(ids)
        if needed > self.index_.get_max_elements():
            self.index_.resize_index(max(needed, int(self.index_.get_max_elements() * 1.5)))
        self.index_.add_items(np.asarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        self.deleted_ -= {int(pid) for pid in ids}

    def remove(self, ids: Sequence[int]) -> None:
        """Leave products out of every answer (HNSW marks them; their slots stay)."""
        self._check_fitted()
        for pid in ids:
            if int(pid) not in self.deleted_:
                self.index_.mark_deleted(int(pid))
                self.deleted_.add(int(pid))

    @property
    def ids_(self) -> np.ndarray:
        self._check_fitted()
        present = np.asarray(self.index_.get_ids_list(), dtype=np.int64)
        return present[~np.isin(present, list(self.deleted_))] if self.deleted_ else present

    def __len__(self) -> int:
        return 0 if not hasattr(self, "index_") else self.index_.get_current_count() - len(self.deleted_)

    def query(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, similarities)``, each ``(n_queries, k)``, most similar first."""
        self._check_fitted()
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        k = int(min(k, len(self)))
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        self.index_.set_ef(max(self.ef_search, k))
        labels, distances = self.index_.knn_query(queries, k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the graph and the deleted ids beside it (``.deleted.npy``), each replaced atomically."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _SAVE_LOCK:
            partial = path.with_name(path.name + ".partial")
            self.index_.save_index(str(partial))
            np.save(path.with_name(path.name + ".deleted.partial.npy"), np.array(sorted(self.deleted_), np.int64))
            path.with_name(path.name + ".deleted.partial.npy").replace(path.with_name(path.name + ".deleted.npy"))
            partial.replace(path)

    @classmethod
    def load(cls, path: Path, dim: int, **settings) -> "ApproximateIndex":
        import hnswlib

        path = Path(path)
        index = cls(**settings)
        index.index_ = hnswlib.Index(space="cosine", dim=int(dim))
        index.index_.load_index(str(path))
        deleted = path.with_name(path.name + ".deleted.npy")
        index.deleted_ = set(np.load(deleted).tolist()) if deleted.exists() else set()
        return index


def _index_path(catalog: Catalog, embedding_key: str) -> Path:
    digest = hashlib.sha256(embedding_key.encode()).hexdigest()[:16]
    return catalog.workspace / "cache" / f"ann-{digest}.hnsw"


def persistent_index(catalog: Catalog, embedding_key: str, chunk: int = 20_000) -> ApproximateIndex:
    """The catalogue's graph for ``embedding_key``: loaded from the workspace cache and brought up to date
    (new products added, archived ones removed), or built in chunks the first time; saved when changed."""
    live = np.asarray(catalog.embedded_product_ids(embedding_key), dtype=np.int64)
    path = _index_path(catalog, embedding_key)
    index, changed = None, False
    if path.exists() and len(live):
        try:
            dim = int(catalog.embeddings(embedding_key, live[:1].tolist())[1].shape[1])
            index = ApproximateIndex.load(path, dim)
        except (RuntimeError, OSError, ValueError):
            index = None  # a damaged cache file: built again below
    if index is None:
        index, changed = ApproximateIndex(), True
        first = live[:chunk].tolist()
        index.fit(*catalog.embeddings(embedding_key, first))
        present = set(first)
    else:
        present = set(np.asarray(index.index_.get_ids_list(), dtype=np.int64).tolist()) - index.deleted_
    missing = [int(pid) for pid in live.tolist() if int(pid) not in present]
    for start in range(0, len(missing), chunk):
        index.add(*catalog.embeddings(embedding_key, missing[start:start + chunk]))
        changed = True
    gone = sorted(present - set(live.tolist()))
    if gone:
        index.remove(gone)
        changed = True
    if changed:
        index.save(path)
    return index
