"""How far crops of a product stray from the product, summed for a retrain and cached.

Notation: under one embedder, product ``i`` has ``1 + V`` vectors ``z_i0`` (its
photo) and ``z_i1 .. z_iV`` (its crop views), their mean ``m_i`` (its prediction
vector, :attr:`~core.features.embeddings.Embedder.prediction_key`) and their *view
scatter* ``S_i = sum_j (z_ij - m_i)(z_ij - m_i)^T``; ``w_i`` is its weight in the
fit, which depends only on its category (balanced: ``n / (K count_k)``). A linear
head fitted on all ``1 + V`` rows of every labelled product needs those rows only
through the ``m_i`` and ``sum_i w_i S_i`` (see :mod:`core.model._ridge`).
:class:`ViewScatter` gives that sum for one retrain's products. The sum over all
of them is kept in ``workspace/cache/`` with the labels and weights it was made
with; the next retrain recomputes only the categories whose members changed and
rescales the rest (every other category's weight changes by one common factor),
so a retrain after a few corrections reads the views of a few categories instead
of every labelled product's, and fits one row per product instead of ``1 + V``.
The same is kept for the latest subset asked for (a retrain's validation
products, whose share the hold-out fit leaves out).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import Catalog

# Products read per step: (1 + V) * dim float32 each, ~70 MB at 1,024 with 4 views and 3,632 dims.
CHUNK_PRODUCTS = 1024


class ViewScatter:
    """``sum_i weights[i] S_i`` over (subsets of) the labelled products ``product_ids``.

    ``product_ids`` and ``labels`` are aligned; ``embedder`` has ``views > 0``.
    A product without all of its views (its photo unreadable when they were made)
    has ``S_i = 0``, as if its views were copies of the photo.
    """

    def __init__(self, catalog: Catalog, embedder, product_ids, labels):
        if not embedder.views:
            raise ValueError("the embedder has no views to summarise")
        self.catalog = catalog
        self.embedder = embedder
        self.views = int(embedder.views)
        self.product_ids = np.asarray(product_ids, dtype=np.int64)
        self.labels = np.asarray([str(label) for label in labels], dtype=object)
        if len(self.labels) != len(self.product_ids):
            raise ValueError("one label per product")
        self.recomputed_products_ = 0

    def cache_path(self, slot: str) -> Path:
        digest = hashlib.sha256(self.embedder.prediction_key.encode()).hexdigest()[:16]
        return self.catalog.workspace / "cache" / f"view-scatter-{digest}-{slot}.bin"

    def weighted(self, weights: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """``(dim, dim)``: ``sum weights[i] S_i`` over ``indices`` (positions in ``product_ids``; all if None).

        Served from the cache when ``weights`` depend only on the category (one
        cache slot for the whole set, one for the latest subset: a retrain asks
        for both, its validation products being the subset);
        ``recomputed_products_`` counts the products whose views had to be read.
        """
        weights = np.asarray(weights, dtype=np.float64)
        slot, ids, labels = "all", self.product_ids, self.labels
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            slot, ids, labels, weights = "subset", ids[indices], labels[indices], weights[indices]
        names, of_product = np.unique(labels.astype(str), return_inverse=True)
        by_class = np.zeros(len(names))
        by_class[of_product] = weights
        if not np.allclose(by_class[of_product], weights, rtol=1e-6, atol=0):
            self.recomputed_products_ += len(ids)
            return self._scatter(ids, weights)
        return self._cached(slot, ids, labels, dict(zip(names.tolist(), by_class.tolist())))

    # -- cached sums ----------------------------------------------------------------
    def _cached(self, slot: str, ids: np.ndarray, labels: np.ndarray, class_weights: dict[str, float]) -> np.ndarray:
        members = _members(ids, labels)
        cached = self._load(slot)
        if cached is not None:
            updated = self._update(slot, cached, members, class_weights, len(ids))
            if updated is not None:
                return updated
        total = self._scatter(ids, np.array([class_weights[str(label)] for label in labels]))
        self.recomputed_products_ += len(ids)
        self._save(slot, total, members, class_weights)
        return total

    def _update(self, slot, cached, members: dict[str, np.ndarray], class_weights: dict[str, float], count: int):
        """The cached sum brought to the new members and weights, or None when recomputing is cheaper."""
        old_total, old_members, old_weights = cached
        unchanged = [name for name, ids in members.items()
                     if name in old_members and np.array_equal(ids, old_members[name])]
        ratios = np.array([class_weights[name] / old_weights[name] for name in unchanged])
        if not len(ratios):
            return None
        # Balanced weights are n / (K count_k): adding one product rescales every category alike.
        factor = float(np.median(ratios))
        kept = {name for name, ratio in zip(unchanged, ratios) if abs(ratio - factor) <= 1e-6 * factor}
        if not any(name not in kept for name in {*old_members, *members}) and abs(factor - 1.0) <= 1e-9:
            return old_total
        # Per changed category: new weight b on its new members N, old (rescaled) weight a on its
        # old members O; b C_N - a C_O = (b - a) C_(N & O) + b C_(N - O) - a C_(O - N), which
        # reads each product once.
        changes: dict[int, float] = {}
        for name in {*old_members, *members} - kept:
            old_ids = old_members.get(name, np.zeros(0, np.int64))
            new_ids = members.get(name, np.zeros(0, np.int64))
            a = factor * old_weights.get(name, 0.0)
            b = class_weights.get(name, 0.0)
            for pid in np.intersect1d(old_ids, new_ids):
                changes[int(pid)] = changes.get(int(pid), 0.0) + b - a
            for pid in np.setdiff1d(new_ids, old_ids):
                changes[int(pid)] = changes.get(int(pid), 0.0) + b
            for pid in np.setdiff1d(old_ids, new_ids):
                changes[int(pid)] = changes.get(int(pid), 0.0) - a
        work = len(changes)
        if work >= count:
            return None
        ids = np.array(list(changes), dtype=np.int64)
        coefficients = np.array(list(changes.values()))
        total = old_total * np.float32(factor)
        for sign in (1.0, -1.0):
            chosen = sign * coefficients > 0
            if chosen.any():
                total += np.float32(sign) * self._scatter(ids[chosen], sign * coefficients[chosen])
        self.recomputed_products_ += work
        self._save(slot, total, members, class_weights)
        return total

    def _load(self, slot: str):
        """``(total, members, class_weights)`` from the slot's file, or None if absent or unreadable."""
        dim = self.embedder.feature_dim
        try:
            with open(self.cache_path(slot), "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if length > os.fstat(handle.fileno()).st_size:
                    return None
                header = json.loads(handle.read(length))
                total = np.fromfile(handle, dtype=np.float32)
            members = {name: np.asarray(ids, dtype=np.int64) for name, ids in header["members"].items()}
            class_weights = {name: float(weight) for name, weight in header["weights"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, truncated, not ours
            return None
        if header.get("dim") != dim or total.size != dim * dim or set(members) != set(class_weights):
            return None
        return total.reshape(dim, dim), members, class_weights

    def _save(self, slot: str, total: np.ndarray, members: dict[str, np.ndarray],
              class_weights: dict[str, float]) -> None:
        """A length-prefixed JSON header, then the float32 matrix (not fsynced: a cache).

        A workspace whose cache cannot be written (full disk, read-only folder) still
        trains; the next retrain then recomputes more.
        """
        header = json.dumps({"dim": self.embedder.feature_dim, "weights": class_weights,
                             "members": {name: ids.tolist() for name, ids in members.items()}}).encode()
        try:
            atomic_write_bytes(self.cache_path(slot), [len(header).to_bytes(8, "little"), header,
                                                       np.ascontiguousarray(total, dtype=np.float32).data],
                               durable=False)
        except OSError:
            pass

    # -- reading views ------------------------------------------------------------------
    def _scatter(self, product_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum weights[i] S_i`` over ``product_ids``, read from the catalogue in chunks."""
        embedder = self.embedder
        dim = embedder.feature_dim
        total = np.zeros((dim, dim), np.float32)
        keys = [embedder.key] + [embedder.view_key(view) for view in range(self.views)]
        basis = _helmert(1 + self.views)
        for start in range(0, len(product_ids), CHUNK_PRODUCTS):
            chunk = np.asarray(product_ids[start:start + CHUNK_PRODUCTS], dtype=np.int64)
            chunk_weights = weights[start:start + CHUNK_PRODUCTS]
            complete = np.ones(len(chunk), dtype=bool)
            rows = np.zeros((len(chunk), 1 + self.views, dim), np.float32)
            for number, key in enumerate(keys):
                ids, vectors = self.catalog.embeddings(key, chunk.tolist())
                found = np.isin(chunk, ids)
                complete &= found
                if len(ids):
                    rows[found, number] = vectors[np.searchsorted(ids, chunk[found])]
            root = np.sqrt(chunk_weights[complete]).astype(np.float32)
            # S_i = R^T (I - J / (1 + V)) R = (H^T R)^T (H^T R) with H an orthonormal basis of the
            # vectors summing to zero: V rows per product instead of 1 + V.
            deviations = np.einsum("vk,nvd->nkd", basis, rows[complete]) * root[:, None, None]
            deviations = deviations.reshape(-1, dim)
            # numpy turns deviations.T @ deviations into a symmetric rank-k update (syrk).
            total += deviations.T @ deviations
        return total


def _members(product_ids: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Category -> its products' ids, ascending."""
    order = np.argsort(product_ids, kind="stable")
    ids, labels = np.asarray(product_ids)[order], np.asarray(labels)[order]
    return {str(name): ids[labels == name] for name in np.unique(labels.astype(str))}


def _helmert(size: int) -> np.ndarray:
    """``(size, size - 1)``: orthonormal columns orthogonal to the all-ones vector."""
    basis = np.zeros((size, size - 1), np.float32)
    for column in range(size - 1):
        basis[:column + 1, column] = 1.0
        basis[column + 1, column] = -(column + 1)
        basis[:, column] /= np.sqrt((column + 1) * (column + 2))
    return basis
