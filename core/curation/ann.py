"""Approximate nearest neighbours for big catalogues: an HNSW graph (faiss), built once, kept, grown.

Up to :data:`APPROXIMATE_FROM` products, similar products are found exactly
(:class:`~core.curation.similarity.ExactIndex`, one matrix product). Above it,
:class:`ApproximateIndex` answers the same ``fit``/``query`` calls from faiss's
hierarchical navigable small-world graph over 8-bit scalar-quantised vectors (cosine
similarity as the inner product of unit vectors): far less work per query and a quarter
of the memory, at a recall measured in ``benchmarks/ann.py`` (which also measured
hnswlib's full-precision graph: slower to build and query, four times the memory).
:func:`persistent_index` keeps the graph in ``workspace/cache/`` and, when products
have arrived since it was saved, adds only those (reading only their vectors); archived
products are left out of every answer.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from core.storage.catalog import Catalog

# Exact search answers a query over 50,000 vectors of the default features in about 20 ms
# on 2 cores; above that the graph pays for itself (benchmarks/ann.py).
APPROXIMATE_FROM = 50_000
# The scalar quantiser learns each dimension's range from this many vectors.
_TRAINING_VECTORS = 20_000
_SAVE_LOCK = threading.Lock()


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ApproximateIndex:
    """Cosine k-NN over ``(id, vector)`` pairs from an HNSW graph; ``add`` grows it, ``save``/``load`` keep it.

    ``m`` (links per node) and ``ef_construction`` trade build time and memory for
    recall; ``ef_search`` (at least ``k`` at query time) trades query time for recall.
    Similarities carry the 8-bit quantisation's error (about 0.001).
    """

    def __init__(self, m: int = 16, ef_construction: int = 40, ef_search: int = 64):
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError(f"m must be at least 2 and ef_construction, ef_search at least 1; got {m}, "
                             f"{ef_construction}, {ef_search}")
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)

    def fit(self, ids: Sequence[int], vectors: np.ndarray) -> "ApproximateIndex":
        import faiss

        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors) or vectors.ndim != 2 or not len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors (expected a non-empty 2-d array)")
        graph = faiss.IndexHNSWSQ(int(vectors.shape[1]), faiss.ScalarQuantizer.QT_8bit, self.m,
                                  faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        self.index_ = faiss.IndexIDMap2(graph)
        self.index_.train(_unit(vectors[:_TRAINING_VECTORS]))
        self.deleted_: set[int] = set()
        self.add(ids, vectors)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("index is empty: call fit() first")

    def _graph(self):
        import faiss

        return faiss.downcast_index(self.index_.index)

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Add products (an id already present comes back once, with its newest vector among the candidates)."""
        self._check_fitted()
        if len(ids) == 0:
            return
        self.index_.add_with_ids(_unit(vectors), np.asarray(ids, dtype=np.int64))
        self.deleted_ -= {int(pid) for pid in ids}
        self._count = None

    def remove(self, ids: Sequence[int]) -> None:
        """Leave products out of every answer (the graph keeps their nodes: faiss's HNSW cannot drop one)."""
        self._check_fitted()
        self.deleted_ |= {int(pid) for pid in ids}
        self._count = None

    @property
    def ids_(self) -> np.ndarray:
        import faiss

        self._check_fitted()
        present = np.unique(faiss.vector_to_array(self.index_.id_map).astype(np.int64))
        return present[~np.isin(present, list(self.deleted_))] if self.deleted_ else present

    def __len__(self) -> int:
        if not hasattr(self, "index_"):
            return 0
        if getattr(self, "_count", None) is None:
            self._count = len(self.ids_)
        return self._count

    def query(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, similarities)``, each ``(n_queries, k)``, most similar first."""
        self._check_fitted()
        queries = _unit(vectors)
        k = int(min(k, len(self)))
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        # Removed (or re-added) products still sit in the graph: ask for enough to drop them.
        fetch = int(min(self.index_.ntotal, k + len(self.deleted_) + 8))
        self._graph().hnsw.efSearch = max(self.ef_search, fetch)
        similarities, found = self.index_.search(queries, fetch)
        ids = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for row in range(len(queries)):
            kept = []
            for pid, score in zip(found[row].tolist(), similarities[row].tolist()):
                if pid >= 0 and pid not in self.deleted_ and pid not in kept:
                    kept.append(pid)
                    scores[row, len(kept) - 1] = score
                    if len(kept) == k:
                        break
            ids[row, :len(kept)] = kept
        return ids, scores

    def save(self, path: Path) -> None:
        """Write the graph and the removed ids beside it (``.deleted.npy``), each replaced atomically."""
        import faiss

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _SAVE_LOCK:
            partial = path.with_name(path.name + ".partial")
            faiss.write_index(self.index_, str(partial))
            deleted = path.with_name(path.name + ".deleted.partial.npy")
            np.save(deleted, np.array(sorted(self.deleted_), np.int64))
            deleted.replace(path.with_name(path.name + ".deleted.npy"))
            partial.replace(path)

    @classmethod
    def load(cls, path: Path, **settings) -> "ApproximateIndex":
        import faiss

        path = Path(path)
        index = cls(**settings)
        index.index_ = faiss.read_index(str(path))
        deleted = path.with_name(path.name + ".deleted.npy")
        index.deleted_ = set(np.load(deleted).tolist()) if deleted.exists() else set()
        return index


def _index_path(catalog: Catalog, embedding_key: str) -> Path:
    digest = hashlib.sha256(embedding_key.encode()).hexdigest()[:16]
    return catalog.workspace / "cache" / f"ann-{digest}.faiss"


def persistent_index(catalog: Catalog, embedding_key: str, chunk: int = 20_000) -> ApproximateIndex:
    """The catalogue's graph for ``embedding_key``: loaded from the workspace cache and brought up to date
    (new products added, archived ones removed), or built in chunks the first time; saved when changed."""
    live = np.asarray(catalog.embedded_product_ids(embedding_key), dtype=np.int64)
    path = _index_path(catalog, embedding_key)
    index, changed = None, False
    if path.exists() and len(live):
        try:
            index = ApproximateIndex.load(path)
        except (RuntimeError, OSError, ValueError):
            index = None  # a damaged cache file: built again below
    if index is None:
        index, changed = ApproximateIndex(), True
        first = live[:chunk].tolist()
        index.fit(*catalog.embeddings(embedding_key, first))
        present = set(first)
    else:
        present = set(index.ids_.tolist())
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
