"""Duplicates: the same product photographed or uploaded twice, and what to do about them.

Exact duplicates (identical bytes, same SHA-256) never become two products:
import reports them and points at the existing product. *Near*-duplicates
(re-encoded, resized, cropped copies, or consecutive shots) are found by cosine
similarity ``s`` of their embeddings: every pair with ``s >= threshold`` is
linked (in a big catalogue, the pairs an approximate index finds) and
:func:`find_groups` returns the connected groups, kept in the workspace at scale;
:func:`describe_groups` adds the photos' names and labels (:func:`duplicate_groups`: both).
:func:`keep_one` resolves a group: one product stays (optionally
taking a chosen label, e.g. the group's majority) and the others are archived
(they leave listings and training, their photos and history are kept;
:meth:`~core.storage.catalog.Catalog.restore_products` brings them back).
:func:`merge_labels` gives every member of a group the same label instead.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from core.curation.ann import APPROXIMATE_FROM
from core.curation.similarity import (  # noqa: F401 - catalogue_state: the Duplicates page's cache key
    catalog_index,
    catalogue_state,
    near_duplicate_groups,
    neighbour_groups,
)
from core.errors import InvalidInputError
from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import ANY, Catalog, LabelConflict, utc_now

# On the default features (Lite0 + Lite2, multi pooling), 0.92 pairs a photo with its
# re-encoded / resized / cropped copies at recall 0.75 and precision 0.99 against distinct
# products (benchmarks/near_duplicates.py); consecutive shots of one product score higher still.
DEFAULT_THRESHOLD = 0.92


@dataclass(frozen=True)
class FoundGroups:
    """Near-duplicate groups as found: ``groups`` (product ids, largest group first), among how many
    embedded ``products``, when (``found_at``, UTC), and whether the catalogue is still as it was then
    (``current``: no product embedded or archived since)."""

    groups: list[list[int]]
    products: int
    found_at: str
    current: bool = True


def find_groups(catalog: Catalog, embedding_key: str, threshold: float = DEFAULT_THRESHOLD,
                approximate_from: int | None = None, reuse_kept: bool = False) -> FoundGroups:
    """Group the catalogue's near-identical products (ids only; :func:`describe_groups` adds the rest).

    Up to ``approximate_from`` products (default :data:`~core.curation.ann.APPROXIMATE_FROM`)
    every pair is compared. From there on the links come from the kept approximate index, and
    the groups found are kept in the workspace: found again only when products were embedded
    or archived since, and with ``reuse_kept`` not even then (a page shows the kept groups at
    once and says how old they are; finding them again at a million products takes minutes).
    Labels never enter: correcting one leaves the groups as they are.
    """
    if not 0.0 < threshold <= 1.0:
        raise InvalidInputError(f"threshold must be in (0, 1], got {threshold}")
    products = catalog.count_embeddings(embedding_key)
    if products < (APPROXIMATE_FROM if approximate_from is None else approximate_from):
        ids, vectors = catalog.embeddings(embedding_key)
        groups = near_duplicate_groups(ids, vectors, threshold=threshold) if len(ids) else []
        return FoundGroups([list(map(int, group)) for group in groups], len(ids), utc_now())
    basis = catalogue_state(catalog, embedding_key)
    kept_file = catalog.workspace / "cache" / (
        "duplicates-" + hashlib.sha256(f"{embedding_key}|{threshold!r}".encode()).hexdigest()[:24] + ".npz")
    kept = _load_kept(kept_file)
    if kept is not None and (kept[1] == basis or reuse_kept):
        return replace(kept[0], current=kept[1] == basis)
    # All pairs grow with the square of the catalogue: each product's nearest neighbours instead.
    groups = neighbour_groups(catalog, embedding_key, catalog_index(catalog, embedding_key, approximate_from),
                              threshold)
    found = FoundGroups([list(map(int, group)) for group in groups], products, utc_now())
    sizes = np.asarray([len(group) for group in found.groups], np.int64)
    flat = np.asarray([pid for group in found.groups for pid in group], np.int64)
    _save_kept(kept_file, flat=flat, sizes=sizes, basis=np.asarray(basis, dtype=object).astype(str),
               products=np.int64(products), found_at=np.asarray(found.found_at))
    return found


def _save_kept(path, **arrays) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_kept(path) -> tuple[FoundGroups, tuple] | None:
    """The kept groups and the basis they were found on (None: none kept, or a damaged file)."""
    try:
        with np.load(path) as stored:
            flat, sizes = stored["flat"], stored["sizes"]
            if int(sizes.sum()) != len(flat):
                return None
            groups = [part.tolist() for part in np.split(flat, np.cumsum(sizes)[:-1])] if len(sizes) else []
            return (FoundGroups(groups, int(stored["products"]), str(stored["found_at"])),
                    tuple(stored["basis"].tolist()))
    except (OSError, ValueError, KeyError):
        return None


def describe_groups(catalog: Catalog, embedding_key: str, groups: Sequence[Sequence[int]],
                    limit: int | None = None) -> list[dict]:
    """What a person needs to decide about each group (the first ``limit``), archived members left out
    (and groups left with fewer than two): ``product_ids``, ``filenames``, ``labels`` (None = unlabelled),
    ``min_similarity`` (the lowest similarity of any two members: below the threshold when the group is a
    chain of look-alikes) and ``majority_label``. Reads only the members' rows."""
    if not groups:
        return []
    archived = set(catalog.archived_product_ids())
    groups = [[int(pid) for pid in group if int(pid) not in archived] for group in groups]
    groups = [group for group in groups if len(group) >= 2][:limit]
    members = sorted({pid for group in groups for pid in group})
    member_ids, member_vectors = catalog.embeddings(embedding_key, members)
    position = {int(pid): i for i, pid in enumerate(member_ids)}
    normalised = member_vectors / np.maximum(np.linalg.norm(member_vectors, axis=1, keepdims=True), 1e-12)
    products = {p.id: p for p in catalog.products(members)}
    labels = catalog.labels_of(members)
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


def duplicate_groups(catalog: Catalog, embedding_key: str, threshold: float = DEFAULT_THRESHOLD,
                     approximate_from: int | None = None) -> list[dict]:
    """Groups of near-identical products, largest first, each described by :func:`describe_groups`."""
    return describe_groups(catalog, embedding_key,
                           find_groups(catalog, embedding_key, threshold, approximate_from).groups)


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
