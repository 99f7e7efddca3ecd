"""Approximate nearest neighbours for big catalogues: an inverted file (faiss), built once, kept, grown.

Up to :data:`APPROXIMATE_FROM` products, similar products are found exactly
(:class:`~core.curation.similarity.ExactIndex`, one matrix product). Above it,
:class:`ApproximateIndex` answers the same ``fit``/``query`` calls from faiss's
inverted file over 8-bit scalar-quantised vectors (cosine similarity as the inner
product of unit vectors): the catalogue is split into cells around k-means centres
and a query scans only the ``probes`` cells nearest to it, at a quarter of the
vectors' memory. Chosen by measurement (``benchmarks/ann.py``, ``benchmarks/scale.py``):
faiss's HNSW graph over the same codes answered faster but found fewer of the true
ten nearest in a million products, where many products have near-equal neighbours;
scanning whole cells finds them. :func:`persistent_index` keeps the index in
``workspace/cache/`` and, when products have arrived since it was saved, adds only
those (reading only their vectors), and builds it again once the catalogue has
outgrown its cells; archived products are left out of every answer.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from core.storage.catalog import Catalog

# Exact search answers a query over 50,000 vectors of the default features in about 20 ms
# on 2 cores; above that the index pays for itself (benchmarks/ann.py).
APPROXIMATE_FROM = 50_000
# Cells and the vectors the cells' centres (and the 8-bit ranges) are learned from; k-means
# over more cells costs more than it saves a query at these sizes.
MAX_CELLS = 1024
_TRAINING_VECTORS = 50_000
_SAVE_LOCK = threading.Lock()


def cells_for(count: int) -> int:
    """The index's cell count for a catalogue of ``count`` products: about its square root."""
    return int(np.clip(round(np.sqrt(max(count, 1))), 1, MAX_CELLS))


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ApproximateIndex:
    """Cosine k-NN over ``(id, vector)`` pairs from an inverted file; ``add`` grows it, ``save``/``load`` keep it.

    ``cells`` (default: :func:`cells_for` the vectors given to ``fit``) splits the
    catalogue; a query scans its ``probes`` nearest cells (more: slower, fewer misses).
    :meth:`close_pairs` compares the products of each cell with each other.
    Similarities carry the 8-bit quantisation's error (about 0.001).
    """

    def __init__(self, cells: int | None = None, probes: int = 8):
        if (cells is not None and cells < 1) or probes < 1:
            raise ValueError(f"cells and probes must be at least 1; got {cells}, {probes}")
        self.cells, self.probes = cells, int(probes)

    def fit(self, ids: Sequence[int], vectors: np.ndarray, training: np.ndarray | None = None) -> "ApproximateIndex":
        """Learn the cells from ``training`` vectors (default: ``vectors``), then add ``(ids, vectors)``."""
        import faiss

        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors) or vectors.ndim != 2 or not len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors (expected a non-empty 2-d array)")
        training = _unit(vectors if training is None else training)[:_TRAINING_VECTORS]
        cells = min(self.cells or cells_for(len(vectors)), len(training))
        dim = int(vectors.shape[1])
        inverted = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, cells,
                                                 faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        inverted.cp.niter = 10  # the centres settle in a few passes; each costs a pass over the sample
        self.index_ = faiss.IndexIDMap2(inverted)
        self.index_.train(training)
        self.deleted_: set[int] = set()
        self.add(ids, vectors)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("index is empty: call fit() first")

    def _inverted(self):
        import faiss

        return faiss.extract_index_ivf(self.index_)

    @property
    def cells_(self) -> int:
        self._check_fitted()
        return int(self._inverted().nlist)

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Add products (an id already present comes back once, with its newest vector among the candidates)."""
        self._check_fitted()
        if len(ids) == 0:
            return
        self.index_.add_with_ids(_unit(vectors), np.asarray(ids, dtype=np.int64))
        self.deleted_ -= {int(pid) for pid in ids}
        self._count = None

    def remove(self, ids: Sequence[int]) -> None:
        """Leave products out of every answer (their codes stay in the cells until the index is built again)."""
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
        # Removed (or re-added) products still sit in the cells: ask for enough to drop them.
        fetch = int(min(self.index_.ntotal, k + len(self.deleted_) + 8))
        self._inverted().nprobe = self.probes
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

    def close_pairs(self, threshold: float, second_cells: bool = True) -> np.ndarray:
        """``(m, 2)`` ids of products at least ``threshold`` similar that share a cell (or, with
        ``second_cells``, one's second-nearest cell is the other's cell), each pair once, smaller id first.

        Near-identical products almost always share their nearest centre; comparing each
        cell's products with each other (one matrix product per cell, from their decoded
        8-bit codes) costs about the catalogue times a cell, not the catalogue squared.
        With ``second_cells`` each product is also compared with the cell whose centre is
        its second nearest (near a border between cells its twin may lie across it), for
        about three times the work. A pair split between two cells is missed.
        """
        import faiss

        self._check_fitted()
        inverted = self._inverted()
        external = faiss.vector_to_array(self.index_.id_map).astype(np.int64)
        deleted = np.array(sorted(self.deleted_), np.int64)
        found = [np.zeros((0, 2), np.int64)]
        visitors: list[list[np.ndarray]] = [[] for _ in range(inverted.nlist)]

        def members(cell):
            size = inverted.invlists.list_size(cell)
            internal = faiss.rev_swig_ptr(inverted.invlists.get_ids(cell), size).copy() if size else \
                np.zeros(0, np.int64)
            return internal[~np.isin(external[internal], deleted)]

        def pairs_between(left, left_vectors, right, right_vectors, same):
            close = left_vectors @ right_vectors.T >= threshold
            first, second = np.nonzero(np.triu(close, k=1) if same else close)
            pairs = np.stack([external[left[first]], external[right[second]]], axis=1)
            found.append(pairs[pairs[:, 0] != pairs[:, 1]])  # a re-added product meets its old self

        inverted.make_direct_map(True)  # decode by position; dropped again below
        try:
            for cell in range(inverted.nlist):
                internal = members(cell)
                if not len(internal):
                    continue
                vectors = inverted.reconstruct_batch(internal)
                pairs_between(internal, vectors, internal, vectors, same=True)
                if second_cells and inverted.nlist > 1:
                    nearest = inverted.quantizer.search(vectors, 2)[1]
                    # The second nearest is the other one of the two (the nearest is this cell, up to rounding).
                    other = np.where(nearest[:, 0] == cell, nearest[:, 1], nearest[:, 0])
                    for target in np.unique(other[other >= 0]):
                        visitors[target].append(internal[other == target])
            for cell in range(inverted.nlist if second_cells else 0):
                if not visitors[cell]:
                    continue
                internal, guests = members(cell), np.concatenate(visitors[cell])
                if len(internal):
                    pairs_between(internal, inverted.reconstruct_batch(internal), guests,
                                  inverted.reconstruct_batch(guests), same=False)
        finally:
            inverted.make_direct_map(False)
        found = np.concatenate(found)
        return np.unique(np.sort(found, axis=1), axis=0) if len(found) else found

    def save(self, path: Path) -> None:
        """Write the index and the removed ids beside it (``.deleted.npy``), each replaced atomically."""
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
    return catalog.workspace / "cache" / f"ann-ivf-{digest}.faiss"


def persistent_index(catalog: Catalog, embedding_key: str, chunk: int = 20_000) -> ApproximateIndex:
    """The catalogue's index for ``embedding_key``: loaded from the workspace cache and brought up to date
    (new products added, archived ones removed), or built in chunks the first time and whenever the
    catalogue has grown to want at least twice the cells; saved when changed."""
    live = np.asarray(catalog.embedded_product_ids(embedding_key), dtype=np.int64)
    path = _index_path(catalog, embedding_key)
    index, changed = None, False
    if path.exists() and len(live):
        try:
            index = ApproximateIndex.load(path)
            if cells_for(len(live)) >= 2 * index.cells_:
                index = None  # cells learned on a far smaller catalogue: each now too full to scan quickly
        except (RuntimeError, OSError, ValueError):
            index = None  # a damaged cache file: built again below
    if index is None:
        index, changed = ApproximateIndex(cells=cells_for(len(live))), True
        # The cells are learned from a sample of the whole catalogue, not from whichever products came first.
        sample = np.sort(np.random.default_rng(0).choice(live, min(len(live), _TRAINING_VECTORS), replace=False))
        first = live[:chunk].tolist()
        index.fit(*catalog.embeddings(embedding_key, first), training=catalog.embeddings(embedding_key,
                                                                                         sample.tolist())[1])
        present = set(first)
        for stale in path.parent.glob(f"ann-{path.name.removeprefix('ann-ivf-')}*"):
            stale.unlink(missing_ok=True)  # the HNSW graph kept until stop 23
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
