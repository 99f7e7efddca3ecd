"""Similar products and near-duplicates by cosine similarity of CNN features.

Notation: vectors are L2-normalised backbone embeddings, so the dot product is
the cosine similarity ``s`` in [-1, 1]. :class:`ExactIndex` answers k-nearest-
neighbour queries by brute force (a matrix product: fast up to ~100k products
on a CPU); anything with the same ``fit``/``query`` interface, such as an
approximate index (:mod:`core.curation.ann`), can replace it; :func:`catalog_index`
picks one by the catalogue's size. :func:`near_duplicate_groups` links every pair
with ``s >= threshold`` and returns the connected groups; :func:`neighbour_groups` does
the same from each product's nearest neighbours, for catalogues where all pairs are too many.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core._internal.memo import ArrayMemo
from core.errors import NotFoundError
from core.storage.catalog import Catalog


def catalogue_state(catalog: Catalog, embedding_key: str) -> tuple[str, str]:
    """Changes whenever the searchable products may change (embedded, archived or restored; labels never
    enter): a cache key for an index or for near-duplicate groups. Embedded products are only ever added,
    so their count says; the archive is named by a digest of its ids (archive one, restore it and archive
    another: the same count, another digest)."""
    import hashlib

    archived = np.asarray(sorted(catalog.archived_product_ids()), np.int64)
    return str(catalog.count_embeddings(embedding_key)), hashlib.sha256(archived.tobytes()).hexdigest()


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class ExactIndex:
    """Brute-force cosine k-NN over a fixed set of ``(id, vector)`` pairs."""

    def fit(self, ids: Sequence[int], vectors: np.ndarray) -> "ExactIndex":
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        self.ids_ = np.asarray(ids, dtype=np.int64)
        self.vectors_ = _normalise(vectors) if len(vectors) else np.zeros((0, 0), np.float32)
        return self

    def query(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, similarities)``, each ``(n_queries, k)``, most similar first."""
        if not hasattr(self, "ids_"):
            raise RuntimeError("index is empty: call fit() first")
        queries = _normalise(np.atleast_2d(vectors))
        k = int(min(k, len(self.ids_)))
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        scores = queries @ self.vectors_.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-scores, top, axis=1).argsort(axis=1)
        top = np.take_along_axis(top, order, axis=1)
        return self.ids_[top], np.take_along_axis(scores, top, axis=1)


def catalog_index(catalog: Catalog, embedding_key: str, approximate_from: int | None = None):
    """The index similar products are searched in: exact up to ``approximate_from`` products (default
    :data:`~core.curation.ann.APPROXIMATE_FROM`), above that the workspace's kept approximate index."""
    from core.curation.ann import APPROXIMATE_FROM, persistent_index

    count = catalog.count_embeddings(embedding_key)
    if count == 0:
        raise NotFoundError(f"no embeddings under '{embedding_key}': run `embed` first")
    if count >= (APPROXIMATE_FROM if approximate_from is None else approximate_from):
        return persistent_index(catalog, embedding_key)
    ids, vectors = catalog.embeddings(embedding_key)
    return ExactIndex().fit(ids, vectors)


def neighbour_groups(catalog: Catalog, embedding_key: str, index, threshold: float, k: int = 10,
                     chunk: int = 20_000) -> list[list[int]]:
    """:func:`near_duplicate_groups` without comparing every pair: linear in the catalogue.

    From an index that compares the products of each of its cells with each other
    (:meth:`core.curation.ann.ApproximateIndex.close_pairs`: a pair split between two
    cells is missed), or else from each product's ``k`` nearest neighbours, its vectors read
    a chunk at a time (a group whose members each have more than ``k`` near-identical
    shots may be split). Only live products of ``embedding_key`` are grouped.
    """
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(catalog.embedded_product_ids(embedding_key), dtype=np.int64)
    if not len(ids):
        return []
    if hasattr(index, "close_pairs"):
        pairs = index.close_pairs(threshold)
        pairs = pairs[np.isin(pairs, ids).all(axis=1)]
        rows, columns = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    else:
        position = {int(pid): row for row, pid in enumerate(ids)}
        rows, columns = [], []
        for start in range(0, len(ids), chunk):
            chunk_ids, vectors = catalog.embeddings(embedding_key, ids[start:start + chunk].tolist())
            found, similarities = index.query(vectors, k=k + 1)
            for pid, neighbours, scores in zip(chunk_ids.tolist(), found, similarities):
                for neighbour in neighbours[(scores >= threshold) & (neighbours != pid)].tolist():
                    if neighbour in position:
                        rows.append(position[pid])
                        columns.append(position[neighbour])
    graph = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)), shape=(len(ids), len(ids)))
    return _groups(ids, connected_components(graph, directed=False)[1])


def close_pairs(vectors: np.ndarray, threshold: float, block: int = 2048):
    """Sparse boolean ``(n, n)`` (SciPy CSR): cosine similarity of rows ``i != j`` at least ``threshold``."""
    from scipy import sparse

    vectors = _normalise(vectors)
    rows, columns = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(vectors), block):
        found_rows, found_columns = np.nonzero(vectors[start:start + block] @ vectors.T >= threshold)
        rows.append(found_rows + start)
        columns.append(found_columns)
    rows, columns = np.concatenate(rows), np.concatenate(columns)
    keep = rows != columns
    return sparse.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], columns[keep])),
                             shape=(len(vectors), len(vectors)))


def near_duplicate_group_ids(vectors: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """One group id per row: rows at least ``threshold`` similar, directly or through others, share it."""
    from scipy.sparse.csgraph import connected_components

    if len(vectors) == 0:
        return np.zeros(0, np.int64)
    return connected_components(close_pairs(vectors, threshold), directed=False)[1].astype(np.int64)


def series_ids(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`near_duplicate_group_ids` of training vectors, remembered: a retrain after a few corrections
    groups the same products' vectors again (read-only result)."""
    return _SERIES.get([vectors], float(threshold), lambda: near_duplicate_group_ids(vectors, threshold))


_SERIES = ArrayMemo(entries=4)


def near_duplicate_groups(ids: Sequence[int], vectors: np.ndarray, threshold: float = 0.95) -> list[list[int]]:
    """Groups (size >= 2) of products whose features are at least ``threshold`` similar."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return []
    return _groups(ids, near_duplicate_group_ids(vectors, threshold))


def _groups(ids: np.ndarray, group_ids: np.ndarray) -> list[list[int]]:
    """The groups of two or more ``ids`` sharing a group id, largest first."""
    # One sort splits every group at once (a mask per group would be quadratic in a big catalogue).
    order = np.argsort(group_ids, kind="stable")
    members = np.split(ids[order], np.flatnonzero(np.diff(group_ids[order])) + 1)
    groups = [sorted(group.tolist()) for group in members if len(group) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))
