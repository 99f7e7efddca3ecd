"""Similar products and near-duplicates by cosine similarity of CNN features.

Notation: vectors are L2-normalised backbone embeddings, so the dot product is
the cosine similarity ``s`` in [-1, 1]. :class:`ExactIndex` answers k-nearest-
neighbour queries by brute force (a matrix product: fast up to ~100k products
on a CPU); anything with the same ``fit``/``query`` interface, such as an
approximate index, can replace it. :func:`near_duplicate_groups` links every pair
with ``s >= threshold`` and returns the connected groups.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.errors import NotFoundError
from core.storage.catalog import Catalog


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


def catalog_index(catalog: Catalog, embedding_key: str) -> ExactIndex:
    ids, vectors = catalog.embeddings(embedding_key)
    if len(ids) == 0:
        raise NotFoundError(f"no embeddings under '{embedding_key}': run `embed` first")
    return ExactIndex().fit(ids, vectors)


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


def near_duplicate_groups(ids: Sequence[int], vectors: np.ndarray, threshold: float = 0.95) -> list[list[int]]:
    """Groups (size >= 2) of products whose features are at least ``threshold`` similar."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return []
    group_ids = near_duplicate_group_ids(vectors, threshold)
    # One sort splits every group at once (a mask per group would be quadratic in a big catalogue).
    order = np.argsort(group_ids, kind="stable")
    members = np.split(ids[order], np.flatnonzero(np.diff(group_ids[order])) + 1)
    groups = [sorted(group.tolist()) for group in members if len(group) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))
