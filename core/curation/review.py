"""The correction workbench: which products to show, and the edits people make.

:func:`review_table` joins products, current labels and the active model's
predictions into one table (one row per product; ``disagrees`` is True where a
label exists and the prediction differs). :func:`select` filters and orders it.
The default order, "most informative", is the active-learning queue (see
:mod:`core.curation.active_learning`, strategy ``hybrid``): unlabelled products first,
those the model is unsure about, that resemble many others and that no label
covers yet; "smallest margin" and "highest entropy" (uncertainty only, with a
diversity guard so near-identical shots do not fill one page) and "random" are
the alternative strategies; "least confident", "newest" and "category" are plain sorts. A
catalogue too large to read whole is filtered, sorted and paged by the database instead
(:func:`filtered_page`, the same view page by page). The edit
functions (:func:`relabel`, :func:`accept_predictions`, :func:`rename_category`,
:func:`undo_last_action`) all append to the label history, so nothing is ever
overwritten and every change can be traced and undone.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import PurePath
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from core.curation import active_learning
from core.errors import InvalidInputError
from core.model.hierarchy import DEFAULT_THRESHOLD, Taxonomy
from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import ANY, RANDOM_MODULUS, RANDOM_MULTIPLIER, Catalog, LabelConflict, ReviewFilter

ORDERS = ("most informative", "smallest margin", "highest entropy", "random", "least confident", "newest",
          "category")
DEFAULT_ORDER = "most informative"
_STRATEGY_OF_ORDER = {"most informative": "hybrid", "smallest margin": "margin", "highest entropy": "entropy",
                      "random": "random"}
# Pages diversified by the guard; beyond them the plain ranking is good enough and cheap.
_DIVERSIFIED_PAGES = 10
# At catalogue scale the hybrid queue spreads only this many of the most uncertain unlabelled products (only
# their vectors are read) and judges what labels cover from at most this many labelled ones, so making
# the queue needs bounded memory at any size.
QUEUE_POOL = 20_000
# From this many products the Review page's default view reads one page of the stored queue instead of
# every product's row (see :func:`queue_page`).
PAGED_FROM = 50_000
# The orders the database sorts itself for a large catalogue (see filtered_page); the uncertainty ones
# with their diversity guard over the first pages.
_DATABASE_SORTS = ("least confident", "newest", "category", "random", "smallest margin", "highest entropy")
_GUARDED = ("smallest margin", "highest entropy")
UNLABELLED = "(unlabelled)"  # how maps show a product without a label
COLUMNS = ["product_id", "filename", "origin", "added_at", "label", "label_source", "predicted_label", "confidence",
           "top_labels", "top_probabilities", "disagrees", "new_category", "answer", "within"]


def origin(source: str | None, added_at: str) -> str:
    """Where a product came from, short enough for a card: two photos named alike are told apart by it."""
    if source and ":" in source and source.split(":", 1)[0].lower().endswith(".zip"):
        return f"from {PurePath(source.split(':', 1)[0]).name}"
    parts = PurePath(source or "").parts
    if len(parts) >= 3:
        return f"from …/{parts[-3]}/{parts[-2]}"
    return f"uploaded {added_at[:16].replace('T', ' ')} UTC"


def readable_answer(prediction: dict, taxonomy: Taxonomy, threshold: float = DEFAULT_THRESHOLD) -> str:
    """A stored prediction as a person should read it: its category, or with a category tree and below
    ``threshold``, the coarse category it is sure of ("Fruit › Apple › ?"; see :meth:`Taxonomy.fallback`)."""
    if not taxonomy:
        return prediction["label"]
    return taxonomy.fallback(np.array([prediction["probabilities"]]), prediction["labels"], threshold)[0]


def review_table(catalog: Catalog, threshold: float = DEFAULT_THRESHOLD,
                 product_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per product (of ``product_ids``, default every one). With a category tree, ``answer`` is the
    prediction as a person should read it: the fine category, or its coarse category ("Fruit › Apple › ?")
    below ``threshold`` (rolled up from the stored runners-up, so a coarse answer is at least that sure);
    ``within`` holds every category the label and the prediction lie under (for the any-level filter).
    Read in one query."""
    active = catalog.active_model_version()
    taxonomy = Taxonomy(catalog.category_parents())
    records = []
    for (product_id, filename, source, added_at, label, label_source, predicted, confidence, labels,
         probabilities, new_category) in catalog.review_rows(active.id if active else None, product_ids):
        prediction = None if predicted is None else {"label": predicted, "labels": json.loads(labels),
                                                     "probabilities": json.loads(probabilities)}
        answer, within = predicted, _NOTHING
        if taxonomy:
            answer = readable_answer(prediction, taxonomy, threshold) if prediction else None
            within = frozenset(node for name in (label, predicted) if name for node in taxonomy.path(name))
        records.append({
            "product_id": int(product_id), "filename": filename, "origin": origin(source, added_at),
            "added_at": added_at, "label": label, "label_source": label_source, "predicted_label": predicted,
            "confidence": confidence, "top_labels": prediction["labels"] if prediction else [],
            "top_probabilities": prediction["probabilities"] if prediction else [],
            "disagrees": bool(label is not None and predicted is not None and label != predicted),
            "new_category": None if new_category is None else bool(new_category),
            "answer": answer, "within": within,
        })
    return pd.DataFrame(records, columns=COLUMNS)


_NOTHING = frozenset()


def prediction_table(catalog: Catalog, product_ids: Sequence[int], names: Mapping[int, str] | None = None,
                     threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """The active model's predictions of ``product_ids`` as one row each, in that order, for a results
    table: ``product_id``, ``photo`` (a small preview as a ``data:`` URL), ``file`` (``names``, default the
    stored file name), ``prediction`` (as a person should read it, see :func:`readable_answer`),
    ``best_guess`` (the fine category when ``prediction`` is a coarse fallback), ``confidence`` and
    ``new_category``. Reads only these products' rows."""
    from core.storage.thumbnails import preview_data_urls

    product_ids = [int(pid) for pid in product_ids]
    active = catalog.active_model_version()
    predictions = catalog.predictions(active.id, product_ids) if active else {}
    previews = preview_data_urls(catalog, product_ids)
    stored_names = {product.id: product.filename for product in catalog.products(product_ids)} if names is None else {}
    taxonomy = Taxonomy(catalog.category_parents())
    rows = []
    for product_id in product_ids:
        prediction = predictions.get(product_id)
        answer = readable_answer(prediction, taxonomy, threshold) if prediction else None
        rows.append({
            "product_id": product_id, "photo": previews.get(product_id),
            "file": (names or stored_names).get(product_id, ""), "prediction": answer,
            "best_guess": prediction["label"] if prediction and answer != prediction["label"] else None,
            "confidence": prediction["confidence"] if prediction else None,
            "new_category": prediction.get("new_category") if prediction else None,
        })
    return pd.DataFrame(rows, columns=["product_id", "photo", "file", "prediction", "best_guess", "confidence",
                                       "new_category"])


def seen_labels(table: pd.DataFrame, product_ids: Sequence[int]) -> dict[int, str | None]:
    """``{product_id: label the person was shown}`` from a review or map table, for the optimistic check.

    Missing labels (NaN, or the map's "(unlabelled)") count as "no label".
    """
    shown = table.set_index("product_id")["label"]
    return {int(pid): shown[pid] if isinstance(shown[pid], str) and shown[pid] != UNLABELLED else None
            for pid in product_ids}


# product ids -> (the ids that have a vector, their vectors), in the order asked for
VectorsOf = Callable[[Sequence[int]], "tuple[np.ndarray, np.ndarray]"]


def _aligned(ids, vectors: np.ndarray, product_ids) -> tuple[np.ndarray, np.ndarray]:
    """The ``product_ids`` found in ``ids`` and their rows of ``vectors``, in the order asked for."""
    row_of = {int(pid): i for i, pid in enumerate(ids)}
    found = [int(pid) for pid in product_ids if int(pid) in row_of]
    return np.asarray(found, dtype=np.int64), vectors[np.asarray([row_of[pid] for pid in found], dtype=np.int64)]


def vectors_from(features: tuple[np.ndarray, np.ndarray] | None) -> VectorsOf | None:
    """``(product_ids, vectors)`` held in memory as a :data:`VectorsOf` lookup."""
    if features is None or not len(features[0]):
        return None
    return lambda product_ids: _aligned(features[0], features[1], product_ids)


def catalog_vectors(catalog: Catalog, embedding_key: str) -> VectorsOf:
    """Vectors read from the catalogue by id, only for the products asked for."""
    return lambda product_ids: _aligned(*catalog.embeddings(embedding_key, list(product_ids)), product_ids)


def _all_vectors(vectors_of: VectorsOf, product_ids) -> np.ndarray | None:
    """The vectors of every one of ``product_ids``, or None if any has none (no guard then)."""
    found, vectors = vectors_of(product_ids)
    return vectors if len(found) == len(product_ids) else None


def _informative(table: pd.DataFrame, strategy: str, vectors_of: VectorsOf | None, page_size: int, seed: int,
                 labelled_ids: set[int], queue: Sequence[int] | None = None) -> pd.DataFrame:
    if table.empty:
        return table
    if strategy == "random":
        return table.iloc[_shuffled(table["product_id"].to_numpy(np.int64))]
    probabilities = active_learning.padded(list(table["top_probabilities"]))
    scores = active_learning.uncertainty(probabilities, strategy)
    has_prediction = table["predicted_label"].notna().to_numpy()
    unlabelled = table["label"].isna().to_numpy()
    product_ids = table["product_id"].to_numpy()
    # Unlabelled and predicted first (that is where a label teaches the model most),
    # then labelled ones (checking them still catches mistakes), then unpredicted.
    ranking = np.lexsort((product_ids, -scores, ~unlabelled, ~has_prediction))
    if strategy == "hybrid" and queue is not None:
        # The stored queue of this model version (which put the products it could not predict last);
        # products labelled since move behind the unlabelled ones, products added since follow the
        # queue in the plain ranking. (:func:`queue_page` and :func:`filtered_page` lay pages out alike.)
        position = {int(pid): i for i, pid in enumerate(queue)}
        queued = np.array([position.get(int(pid), len(position)) for pid in product_ids], dtype=np.int64)
        rank_of = np.empty(len(ranking), dtype=np.int64)
        rank_of[ranking] = np.arange(len(ranking))
        return table.iloc[np.lexsort((rank_of, queued, ~unlabelled))]
    if vectors_of is None:
        return table.iloc[ranking]
    limit = page_size * _DIVERSIFIED_PAGES
    if strategy != "hybrid":
        # Only the first pages are spread out: only their vectors are read.
        head = ranking[:limit]
        vectors = _all_vectors(vectors_of, product_ids[head].tolist())
        if vectors is None:
            return table.iloc[ranking]
        spread = head[active_learning.diverse_order(np.arange(len(head)), vectors, page_size)]
        return table.iloc[np.concatenate([spread, ranking[limit:]])]
    # Hybrid: greedy over the unlabelled, predicted candidates, away from what labels already cover.
    candidates = np.flatnonzero(unlabelled & has_prediction)
    if len(candidates) > QUEUE_POOL:
        candidates = np.sort(candidates[np.argsort(-scores[candidates], kind="stable")[:QUEUE_POOL]])
    head = _hybrid_head(product_ids[candidates], probabilities[candidates], labelled_ids, vectors_of, limit, seed)
    if head is None:
        return table.iloc[ranking]
    head = candidates[head]
    return table.iloc[np.concatenate([head, ranking[~np.isin(ranking, head)]])]


def _hybrid_head(candidate_ids: np.ndarray, probabilities: np.ndarray, labelled_ids, vectors_of: VectorsOf,
                 limit: int, seed: int) -> np.ndarray | None:
    """The first ``limit`` of the candidates (rows of ``candidate_ids``) in "most informative" order, away
    from what (at most :data:`QUEUE_POOL` of) ``labelled_ids`` cover; None if a candidate has no vector."""
    candidate_vectors = _all_vectors(vectors_of, np.asarray(candidate_ids).tolist())
    if candidate_vectors is None:
        return None
    coverage = sorted(labelled_ids)
    if len(coverage) > QUEUE_POOL:
        coverage = sorted(np.random.default_rng(seed).choice(coverage, QUEUE_POOL, replace=False).tolist())
    labelled_vectors = vectors_of(coverage)[1] if coverage else None
    labelled_vectors = labelled_vectors if labelled_vectors is not None and len(labelled_vectors) else None
    return active_learning.hybrid_order(candidate_vectors, probabilities, min(limit, len(candidate_ids)),
                                        labelled_vectors, seed)


def _shuffled(product_ids: np.ndarray) -> np.ndarray:
    """Row indices of ``product_ids`` in the "random" order: a fixed shuffle the database computes alike
    (:data:`~core.storage.catalog.RANDOM_MULTIPLIER`), so a page of a million needs no table read."""
    keys = (product_ids * RANDOM_MULTIPLIER) % RANDOM_MODULUS
    return np.lexsort((product_ids, keys))


def queue_file(catalog: Catalog, version_id: int):
    """Where the version's queue for its current predictions is kept (it may not exist yet)."""
    predicted = catalog.count_predictions(version_id)
    return catalog.workspace / "cache" / f"review-queue-v{int(version_id)}-{predicted}.npy"


def informative_queue(catalog: Catalog, version_id: int, vectors_of: VectorsOf, page_size: int = 12,
                      seed: int = 0) -> list[int]:
    """The "most informative" order of the whole catalogue for one model version, computed once and kept
    in the workspace's cache (every later page of every session reads it; see :func:`select`'s ``queue``).

    Computed again when the version has predicted more products since (an upload), so new photos
    take their place in the queue.
    """
    path = queue_file(catalog, version_id)
    with _QUEUE_LOCKS.setdefault(str(path), threading.Lock()):
        if path.is_file():
            try:
                return np.load(path).tolist()
            except (OSError, ValueError):
                pass  # a damaged cache file is computed again
        ids = _queue(catalog, version_id, vectors_of, page_size, seed)
        buffer = io.BytesIO()
        np.save(buffer, ids)
        try:
            atomic_write_bytes(path, buffer.getvalue(), durable=False)
            for older in path.parent.glob(f"review-queue-v{int(version_id)}-*.npy"):
                if older != path:  # the same version before an upload: never read again
                    older.unlink(missing_ok=True)
        except OSError:
            pass  # a cache that cannot be written (read-only, full disk) is computed again next time
        return ids.tolist()


_QUEUE_LOCKS: dict[str, threading.Lock] = {}


def _queue(catalog: Catalog, version_id: int, vectors_of: VectorsOf, page_size: int, seed: int) -> np.ndarray:
    """Every live product in "most informative" order, as :func:`select` lays the whole table out, from the
    database's margin ranking and the rows of at most :data:`QUEUE_POOL` candidates (never the whole table)."""
    everything = ReviewFilter()
    ranking = np.asarray(catalog.review_ids(version_id, everything, "smallest margin"), dtype=np.int64)
    # The ranking starts with the unlabelled products that have a prediction, the least sure first.
    pool = catalog.review_ids(version_id, ReviewFilter(labelled=False), "smallest margin", 0, QUEUE_POOL)
    predictions = catalog.predictions(version_id, pool)
    candidates = np.array(sorted(pid for pid in pool if pid in predictions), dtype=np.int64)
    if not len(candidates):
        return ranking
    probabilities = active_learning.padded([predictions[pid]["probabilities"] for pid in candidates.tolist()])
    head = _hybrid_head(candidates, probabilities, catalog.labelled_product_ids(), vectors_of,
                        page_size * _DIVERSIFIED_PAGES, seed)
    if head is None:
        return ranking
    head = candidates[head]
    return np.concatenate([head, ranking[~np.isin(ranking, head)]])


def stored_queue(catalog: Catalog, version_id: int) -> tuple[list[int], bool] | None:
    """The version's stored queue without computing anything: ``(product ids, current)``, where
    ``current`` is False for a queue made before the version's latest predictions (an upload), or None."""
    current = queue_file(catalog, version_id)
    for path in [current, *sorted(current.parent.glob(f"review-queue-v{int(version_id)}-*.npy"))]:
        try:
            return np.load(path).tolist(), path == current
        except (OSError, ValueError):
            continue
    return None


def queue_page(catalog: Catalog, queue: Sequence[int], page: int, page_size: int = 12) -> tuple[pd.DataFrame, int]:
    """One page of the default view read from the version's stored ``queue``, and how many products the view
    holds, without reading every product's row.

    As in :func:`select` with ``queue``: products labelled since the queue was made move behind the
    unlabelled ones (their order kept) and archived products leave it. Reads the current labels' ids,
    the archived ids and the page's rows. Products added since the queue was made join it when the queue
    is made again (in the background, after an upload).
    """
    if page < 1 or page_size < 1:
        raise ValueError(f"page and page_size must be at least 1, got {page} and {page_size}")
    queue = np.asarray(queue, dtype=np.int64)
    queue = queue[~np.isin(queue, catalog.archived_product_ids())]
    labelled = np.isin(queue, catalog.labelled_product_ids())
    ordered = np.concatenate([queue[~labelled], queue[labelled]])
    return _rows_in_order(catalog, ordered[(page - 1) * page_size: page * page_size].tolist()), len(ordered)


def review_filter(catalog: Catalog, predicted: Sequence[str] | None = None,
                  confidence_range: tuple[float, float] = (0.0, 1.0), labelled: bool | None = None,
                  disagreements_only: bool = False, new_category_only: bool = False,
                  under: Sequence[str] | None = None) -> ReviewFilter:
    """:func:`select`'s filters as the database applies them; ``under`` becomes every name whose path in
    the category tree passes through one of these categories (none without a tree, as in the table)."""
    named = None
    if under:
        taxonomy, wanted = Taxonomy(catalog.category_parents()), set(under)
        named = frozenset()
        if taxonomy:
            active = catalog.active_model_version()
            names = set(catalog.categories()) | set(taxonomy.parents) | set(taxonomy.parents.values()) \
                | set(active.classes if active else [])
            named = frozenset(name for name in names if not wanted.isdisjoint(taxonomy.path(name)))
    return ReviewFilter(predicted=frozenset(predicted or ()), confidence_range=tuple(confidence_range),
                        labelled=labelled, disagreements_only=disagreements_only,
                        new_category_only=new_category_only, named=named)


def _positions(queue: Sequence[int], product_ids: np.ndarray) -> np.ndarray:
    """Each product's place in ``queue`` (``len(queue)`` for one not in it), without a dict of a million ids."""
    queue = np.asarray(queue, dtype=np.int64)
    if not len(queue):
        return np.zeros(len(product_ids), dtype=np.int64)
    by_id = np.argsort(queue, kind="stable")
    sorted_queue = queue[by_id]
    found = np.minimum(np.searchsorted(sorted_queue, product_ids), len(queue) - 1)
    return np.where(sorted_queue[found] == product_ids, by_id[found], len(queue))


def filtered_page(catalog: Catalog, page: int, page_size: int = 12, order: str = DEFAULT_ORDER,
                  where: ReviewFilter = ReviewFilter(), queue: Sequence[int] | None = None,
                  vectors_of: VectorsOf | None = None, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """One page of :func:`select`'s view for a catalogue too large to read whole, and how many products
    the view holds: the filters run in the database and a page reads its own rows.

    Every order but "most informative" is sorted and paged by the database ("smallest margin" and
    "highest entropy" by the margin and entropy stored with each prediction; their first pages are read
    together and spread by the diversity guard, through ``vectors_of``, as in :func:`select`).
    "Most informative" with the version's stored ``queue`` reads the matching products' ids and label
    states and lays them out in the queue's order (labelled ones behind, as in :func:`select`; products
    added since the queue was made follow it by id until it is made again); without a stored queue it
    reads the matching products' rows.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if page < 1 or page_size < 1:
        raise ValueError(f"page and page_size must be at least 1, got {page} and {page_size}")
    active = catalog.active_model_version()
    model_id = active.id if active else None
    start = (page - 1) * page_size
    if order == DEFAULT_ORDER and model_id is None:
        # Nothing is predicted, so nothing is uncertain: unlabelled first, each part by id, as in select.
        wanted = catalog.review_ids(None, where, "smallest margin", start, page_size)
        matching = catalog.review_count(None, where)
    elif order in _GUARDED and vectors_of is not None and start < page_size * _DIVERSIFIED_PAGES:
        head = catalog.review_ids(model_id, where, order, 0, page_size * _DIVERSIFIED_PAGES)
        vectors = _all_vectors(vectors_of, head) if head else None
        if vectors is not None:
            head = [head[i] for i in active_learning.diverse_order(np.arange(len(head)), vectors, page_size)]
        wanted = head[start:start + page_size]
        matching = catalog.review_count(model_id, where)
    elif order in _DATABASE_SORTS:
        wanted = catalog.review_ids(model_id, where, order, start, page_size)
        matching = catalog.review_count(model_id, where)
    elif order == DEFAULT_ORDER and queue is not None:
        if where.keeps_everything:
            return queue_page(catalog, queue, page, page_size)
        ids, labelled = catalog.review_states(model_id, where).T
        ranked = ids[np.lexsort((ids, _positions(queue, ids), labelled))]
        wanted, matching = ranked[start:start + page_size].tolist(), len(ranked)
    else:
        table = review_table(catalog, product_ids=catalog.review_ids(model_id, where, "id"))
        # What labels already cover is judged from every labelled product, as with the whole table.
        covered = set(catalog.labelled_product_ids()) if order == DEFAULT_ORDER else None
        selected = select(table, order=order, page_size=page_size, seed=seed, queue=queue, covered=covered,
                          vectors_of=vectors_of)
        return selected.iloc[start:start + page_size].reset_index(drop=True), len(selected)
    return _rows_in_order(catalog, wanted), matching


def _rows_in_order(catalog: Catalog, product_ids: Sequence[int]) -> pd.DataFrame:
    """The review rows of ``product_ids`` in that order (a product archived meanwhile leaves)."""
    rows = review_table(catalog, product_ids=list(product_ids)).set_index("product_id")
    return rows.reindex(product_ids).dropna(subset=["filename"]).reset_index()


def select(table: pd.DataFrame, order: str = DEFAULT_ORDER, predicted: Sequence[str] | None = None,
           confidence_range: tuple[float, float] = (0.0, 1.0), labelled: bool | None = None,
           disagreements_only: bool = False, features: tuple[np.ndarray, np.ndarray] | None = None,
           new_category_only: bool = False, under: Sequence[str] | None = None,
           page_size: int = 12, seed: int = 0, vectors_of: VectorsOf | None = None,
           queue: Sequence[int] | None = None, covered: set[int] | None = None) -> pd.DataFrame:
    """Filter and order the review table (see the module docstring).

    ``features`` = ``(product_ids, vectors)`` (or ``vectors_of``, which reads only the
    vectors asked for) enables the diversity guard of the active-learning orders, per
    page of ``page_size``. ``queue``: the model version's stored "most informative" order
    (:func:`informative_queue`), used instead of computing it again. ``new_category_only`` keeps
    the products flagged "new category?" (see :mod:`core.model.novelty`). ``under`` keeps the
    products whose label or prediction lies under (or is) one of these categories, at any level.
    ``covered``: the labelled products whose neighbourhoods "most informative" counts as covered
    (default: the table's labelled ones).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    selected = table
    labelled_ids = covered if covered is not None else \
        {int(pid) for pid in table.loc[table["label"].notna(), "product_id"]}
    if predicted:
        selected = selected[selected["predicted_label"].isin(list(predicted))]
    low, high = confidence_range
    if (low, high) != (0.0, 1.0):
        selected = selected[selected["confidence"].between(low, high)]
    if labelled is not None:
        selected = selected[selected["label"].notna() == labelled]
    if disagreements_only:
        selected = selected[selected["disagrees"]]
    if new_category_only:
        selected = selected[selected["new_category"] == True]  # noqa: E712 - None: not judged
    if under:
        wanted = set(under)
        selected = selected[selected["within"].map(lambda nodes: not wanted.isdisjoint(nodes))]
    if order in _STRATEGY_OF_ORDER:
        selected = _informative(selected, _STRATEGY_OF_ORDER[order], vectors_of or vectors_from(features),
                                page_size, seed, labelled_ids, queue if order == DEFAULT_ORDER else None)
    elif order == "least confident":
        # Products without a prediction yet come last: there is nothing to check.
        selected = selected.sort_values(["confidence", "product_id"], na_position="last")
    elif order == "newest":
        selected = selected.sort_values(["added_at", "product_id"], ascending=False)
    else:
        key = selected["label"].fillna(selected["predicted_label"]).fillna("")
        selected = selected.assign(_key=key).sort_values(["_key", "product_id"]).drop(columns="_key")
    return selected.reset_index(drop=True)


def relabel(catalog: Catalog, product_ids: Sequence[int], label: str | None, author: str | None = None,
            seen: Mapping[int, str | None] | None = None) -> tuple[int, list[LabelConflict]]:
    """Give ``product_ids`` the category ``label`` (a person's decision).

    ``seen`` maps product ids to the label the person saw; a product whose label
    changed since is not touched and comes back as a conflict. Returns
    ``(changed, conflicts)``.
    """
    seen = seen or {}
    return catalog.change_labels([(int(pid), label, seen.get(int(pid), ANY)) for pid in product_ids],
                                 source="human", author=author)


def accept_predictions(catalog: Catalog, threshold: float, author: str | None = None,
                       product_ids: Sequence[int] | None = None) -> int:
    """Label every *unlabelled* product whose prediction's confidence is >= ``threshold``.

    A product flagged "new category?" is never accepted: its confidence is shared among the
    categories the model knows, none of which may be right. The database picks the products (no
    table of the whole catalogue is read), and one labelled by someone in the meantime keeps its label.
    """
    active = catalog.active_model_version()
    if active is None:
        return 0
    return catalog.set_labels(catalog.acceptable_predictions(active.id, threshold, product_ids),
                              source="model-accepted", author=author, only_if_unlabelled=True)


def confirm(catalog: Catalog, product_ids: Sequence[int], author: str | None = None) -> int:
    """Confirm a page: unlabelled products take their predicted category."""
    return accept_predictions(catalog, 0.0, author, product_ids)


def rename_category(catalog: Catalog, old: str, new: str, author: str | None = None
                    ) -> tuple[int, list[LabelConflict]]:
    """Rename ``old`` to ``new``; if ``new`` exists this merges the two. History is kept.

    Only products still labelled ``old`` when the change is written move; one that
    someone relabelled in between keeps its label and comes back as a conflict.
    Returns ``(changed, conflicts)``.
    """
    new = (new or "").strip()
    if not new:
        raise InvalidInputError("the new category name is empty")
    members = [pid for pid, label in catalog.current_labels().items() if label == old]
    if not members:
        raise InvalidInputError(f"no product is labelled {old!r}")
    changed, conflicts = catalog.change_labels([(pid, new, old) for pid in members], source="human", author=author)
    if not conflicts:
        catalog.rename_in_tree(old, new)
    return changed, conflicts


def undo_last_action(catalog: Catalog, author: str | None = None) -> tuple[int, list[LabelConflict]]:
    """Revert ``author``'s most recent labelling action by appending its inverse.

    Only the author's own actions are undone (``None`` is the unnamed local user:
    it never reaches anybody else's work). Each product goes back only if its label
    is still what the action set: a later change by someone else is never
    overwritten, it comes back as a conflict. Repeated calls step further back; an
    action that was undone is not undone twice. Returns ``(changed, conflicts)``.
    """
    action = catalog.last_action(author)
    if action is None:
        return 0, []
    events = [(event.product_id, event.label, event.previous_label) for event in catalog.action_events(action)]
    return catalog.change_labels([(pid, previous, label) for pid, label, previous in events], source="human",
                                 author=author, action=f"undo:{action}")
