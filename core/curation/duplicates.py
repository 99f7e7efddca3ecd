"""Duplicates: the same product photographed or uploaded twice, and what to do about them.

Exact duplicates (identical bytes, same SHA-256) never become two products:
import reports them and points at the existing product. *Near*-duplicates
(re-encoded, resized, cropped copies, or consecutive shots) are found by cosine
similarity ``s`` of their embeddings: every pair with ``s >= threshold`` is
linked and :func:`duplicate_groups` returns the connected groups with the
photos' labels. :func:`keep_one` resolves a group: one product stays (optionally
taking a chosen label, e.g. the group's majority) and the others are archived
(they leave listings and training, their photos and history are kept;
:meth:`~core.storage.catalog.Catalog.restore_products` brings them back).
:func:`merge_labels` gives every member of a group the same label instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from core.curation.ann import APPROXIMATE_FROM
from core.curation.similarity import catalog_index, near_duplicate_groups, neighbour_groups
from core.errors import InvalidInputError
from core.storage.catalog import ANY, Catalog, LabelConflict

# On the default features (Lite0 + Lite2, multi pooling), 0.92 pairs a photo with its
# re-encoded / resized / cropped copies at recall 0.75 and precision 0.99 against distinct
# products (benchmarks/near_duplicates.py); consecutive shots of one product score higher still.
DEFAULT_THRESHOLD = 0.92


def duplicate_groups(catalog: Catalog, embedding_key: str, threshold: float = DEFAULT_THRESHOLD,
                     approximate_from: int | None = None) -> list[dict]:
    """Groups of near-identical products, largest first.

    Each group: ``product_ids``, ``filenames``, ``labels`` (None = unlabelled),
    ``min_similarity`` (the lowest similarity of any two members: below the
    threshold when the group is a chain of look-alikes) and
    ``majority_label``. From ``approximate_from`` products on (default
    :data:`~core.curation.ann.APPROXIMATE_FROM`) the links come from each product's
    nearest neighbours in the kept approximate index instead of all pairs.
    """
    if not 0.0 < threshold <= 1.0:
        raise InvalidInputError(f"threshold must be in (0, 1], got {threshold}")
    if catalog.count_embeddings(embedding_key) >= (APPROXIMATE_FROM if approximate_from is None
                                                    else approximate_from):
        # All pairs grow with the square of the catalogue: each product's nearest neighbours instead.
        groups = neighbour_groups(catalog, embedding_key, catalog_index(catalog, embedding_key, approximate_from),
                                  threshold)
    else:
        ids, vectors = catalog.embeddings(embedding_key)
        groups = near_duplicate_groups(ids, vectors, threshold=threshold) if len(ids) else []
    if not groups:
        return []
    members = sorted({pid for group in groups for pid in group})
    member_ids, member_vectors = catalog.embeddings(embedding_key, members)
    position = {int(pid): i for i, pid in enumerate(member_ids)}
    normalised = member_vectors / np.maximum(np.linalg.norm(member_vectors, axis=1, keepdims=True), 1e-12)
    products = {p.id: p for p in catalog.products(members)}
    labels = catalog.current_labels()
    result = []
    for group in groups:
        rows = normalised[[position[pid] for pid in group]]
        similarities = rows @ rows.T
        group_labels = [labels.get(pid) for pid in group]
        counted = Counter(label for label in group_labels if label is not None)
        result.append({
            "product_ids": list(group),
            "filenames": [products[pid].filename for pid in group],
            "labels": group_labels,
            "min_similarity": float(similarities[np.triu_indices(len(group), 1)].min()),
            "majority_label": counted.most_common(1)[0][0] if counted else None,
        })
    return result


def catalogue_state(catalog: Catalog, embedding_key: str) -> tuple:
    """Changes whenever the groups may change (products embedded, archived, labels): a cache key."""
    latest = catalog.label_history(limit=1)
    return (catalog.count_embeddings(embedding_key), len(catalog.archived()), latest[0].id if latest else 0)


def keep_one(catalog: Catalog, product_ids: Sequence[int], keep: int, label: str | None = None,
             author: str | None = None, seen: Mapping[int, str | None] | None = None
             ) -> tuple[int, list[LabelConflict]]:
    """Keep product ``keep`` of a group, archive the others; return ``(archived, conflicts)``.

    With ``label`` the kept product takes it (a person's decision, undoable), unless its
    label changed since the person saw it (``seen``, as for every label change): then
    it keeps the newer label and the change comes back as a conflict.
    """
    product_ids = [int(pid) for pid in product_ids]
    if int(keep) not in product_ids:
        raise InvalidInputError(f"product {keep} is not in the group {product_ids}")
    conflicts: list[LabelConflict] = []
    if label:
        seen = seen or {}
        _, conflicts = catalog.change_labels([(int(keep), label, seen.get(int(keep), ANY))], source="human",
                                             author=author)
    others = [pid for pid in product_ids if pid != int(keep)]
    archived = catalog.archive_products(others, reason="near-duplicate", kept_product_id=int(keep), author=author)
    return archived, conflicts


def merge_labels(catalog: Catalog, product_ids: Sequence[int], label: str, author: str | None = None,
                 seen: Mapping[int, str | None] | None = None) -> tuple[int, list[LabelConflict]]:
    """Give every product of a group the same ``label``; return ``(changed, conflicts)``.

    A product whose label changed since the person saw it (``seen``) keeps the newer
    label and comes back as a conflict.
    """
    if not (label or "").strip():
        raise InvalidInputError("choose the label the group should share")
    seen = seen or {}
    return catalog.change_labels([(int(pid), label, seen.get(int(pid), ANY)) for pid in product_ids],
                                 source="human", author=author)
