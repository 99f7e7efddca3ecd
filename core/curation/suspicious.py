"""Suspicious labels: products whose label is probably wrong, judged by models that never saw them.

Notation: ``y`` is a product's current label, ``P`` the ``(n, K)`` matrix of
*out-of-sample* predicted probabilities: each product's row comes from a
linear head trained on the other ``folds - 1`` folds of the labelled catalogue
(k-fold cross-validation on cached embeddings), so a wrong label cannot vouch
for itself. Catalogues are full of near-identical shots of one product, and a
supplier who mislabels one usually mislabels the whole series: the folds are
therefore *group-aware*, a product's near-duplicates (cosine similarity at
least ``group_threshold``) always share its fold, so a wrong label cannot hide
behind its twin either. A product is flagged when the model puts another
category first and the probability of its own label ``P[i, y_i]`` (its label
quality) is below ``max_label_probability``; flagged products are ranked by
label quality, lowest first, and come with the suggested label ``argmax P[i]``.
Confident learning's per-class thresholds (cleanlab) flag far fewer of the
errors once twins are held out together (README, ``benchmarks/label_errors.py``).
A person can answer "label is right": that verdict is stored with the label it
approved and the product is not flagged again unless its label changes.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from core.errors import InvalidInputError, TrainingError
from core.model._ridge import fit_standardised_ridge_many, fit_temperature
from core.storage.catalog import Catalog

DEFAULT_FOLDS = 5
# Near-duplicate groups for the folds: the duplicates page's threshold (same products, re-shot or re-encoded).
DEFAULT_GROUP_THRESHOLD = 0.92
# Flag a label whose out-of-sample probability is below this (and another category is predicted).
# Measured on grocery train with 5% corrupted labels, random and whole-series errors (label_errors.py).
MAX_LABEL_PROBABILITY = 0.005
COLUMNS = ["product_id", "filename", "label", "label_source", "suggested_label", "label_quality",
           "suggested_probability"]


def _fold_assignment(targets: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Stratified: every class's members are spread over the folds in random order.

    With ``groups`` (one group id per row) a group never spans two folds: groups go,
    largest first, to the fold that holds fewest of their majority class so far;
    only a category made of a single group is split.
    """
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(targets), dtype=np.int64)
    if groups is None:
        offset = 0
        for value in np.unique(targets):
            members = rng.permutation(np.flatnonzero(targets == value))
            assignment[members] = (np.arange(len(members)) + offset) % folds
            offset += len(members)  # small classes start on different folds
        return assignment
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in rng.permutation(group_index.max() + 1)]
    members.sort(key=len, reverse=True)  # stable: equal sizes keep the random order
    load = np.zeros((folds, int(targets.max()) + 1))
    for rows in members:
        majority = int(np.bincount(targets[rows]).argmax())
        fold = int(np.argmin(load[:, majority] + 1e-3 * load.sum(axis=1)))
        assignment[rows] = fold
        load[fold, majority] += len(rows)
    # A category that is one series of shots would be held out whole and could not be judged at all:
    # its products are spread as without groups (its twins then vouch for each other, the best there is).
    for value in np.unique(targets):
        rows = np.flatnonzero(targets == value)
        if len(rows) >= 2 and len(np.unique(assignment[rows])) == 1:
            assignment[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return assignment


def near_duplicate_group_ids(features: np.ndarray, threshold: float = DEFAULT_GROUP_THRESHOLD) -> np.ndarray:
    """One id per row; rows whose features are at least ``threshold`` similar (transitively) share it."""
    from core.curation import similarity

    return similarity.near_duplicate_group_ids(features, threshold)


def out_of_sample_probabilities(features: np.ndarray, labels, folds: int = DEFAULT_FOLDS, l2: float = 0.1,
                                seed: int = 0, augmented_views=(), groups: np.ndarray | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
    """``(P (n, K), classes (K,))``: each row predicted by a head that never saw that product.

    The heads are the default closed-form linear head (class-weighted ridge,
    see :mod:`core.model.head`); one softmax temperature is fitted on all the
    out-of-sample scores. ``augmented_views`` (arrays shaped like ``features``)
    add training rows for the products in the training folds. ``groups`` (one id per
    row, e.g. :func:`near_duplicate_group_ids`) keeps each group in one fold.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray([str(label) for label in labels], dtype=object)
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    classes = np.array(sorted(set(labels)), dtype=object)
    if len(classes) < 2:
        raise TrainingError("finding suspicious labels needs labelled products in at least 2 categories")
    if folds < 2:
        raise InvalidInputError("folds must be at least 2")
    targets = np.searchsorted(classes, labels)
    if groups is not None and len(groups) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(groups)} group ids")
    assignment = _fold_assignment(targets, folds, seed, groups)
    scores = np.zeros((len(features), len(classes)), dtype=np.float32)
    used = [fold for fold in range(folds) if (assignment == fold).any()]
    # One Gram matrix for all folds: each fold's fit subtracts its own rows' share.
    mean, variance, fits = fit_standardised_ridge_many(
        features, targets, len(classes), l2, [np.flatnonzero(assignment == fold) for fold in used], augmented_views)
    for fold, (weights, bias) in zip(used, fits):
        held_out = assignment == fold
        fold_scores = ((features[held_out] - mean) / np.sqrt(variance)) @ weights + bias
        # A class absent from this fold's training rows cannot be predicted.
        fold_scores[:, np.bincount(targets[~held_out], minlength=len(classes)) == 0] = -1e3
        scores[held_out] = fold_scores
    temperature = fit_temperature(scores, targets)
    logits = temperature * scores.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32), classes


def find_label_issues(labels, probabilities: np.ndarray, classes: np.ndarray,
                      max_label_probability: float = MAX_LABEL_PROBABILITY) -> pd.DataFrame:
    """Rows whose label the out-of-sample model rejects, most suspicious first.

    Columns: ``index`` (row in the inputs), ``label``, ``suggested_label``,
    ``label_quality`` (P[i, y_i]) and ``suggested_probability``.
    """
    labels = np.asarray([str(label) for label in labels], dtype=object)
    if len(labels) == 0:
        return pd.DataFrame(columns=["index", "label", "suggested_label", "label_quality", "suggested_probability"])
    targets = np.searchsorted(classes, labels)
    quality = probabilities[np.arange(len(labels)), targets]
    suggested = probabilities.argmax(axis=1)
    # A category with a single product cannot be judged by its peers.
    counts = np.bincount(targets, minlength=len(classes))
    flagged = np.flatnonzero((quality < max_label_probability) & (suggested != targets) & (counts[targets] >= 2))
    flagged = flagged[np.argsort(quality[flagged], kind="stable")]
    return pd.DataFrame({
        "index": flagged,
        "label": labels[flagged],
        "suggested_label": classes[suggested[flagged]],
        "label_quality": quality[flagged],
        "suggested_probability": probabilities[flagged, suggested[flagged]],
    })


def suspicious_labels(catalog: Catalog, embedding_key: str, folds: int = DEFAULT_FOLDS, seed: int = 0,
                      include_verified: bool = False) -> tuple[pd.DataFrame, dict]:
    """Flagged products of the catalogue, most suspicious first, and run statistics.

    Products whose current label a person marked as right are left out unless
    ``include_verified``.
    """
    started = time.perf_counter()
    labels = catalog.current_labels_with_source()
    ids, features = catalog.embeddings(embedding_key, list(labels))
    if len(ids) == 0:
        raise TrainingError(f"no labelled products with embeddings under '{embedding_key}': import labelled "
                         "photos and run `embed` first")
    current = np.array([labels[int(pid)][0] for pid in ids], dtype=object)
    probabilities, classes = out_of_sample_probabilities(features, current, folds=folds, seed=seed,
                                                         groups=near_duplicate_group_ids(features))
    issues = find_label_issues(current, probabilities, classes)
    issues["product_id"] = ids[issues["index"].to_numpy(dtype=np.int64)] if len(issues) else []
    verdicts = catalog.label_verdicts()
    if not include_verified and len(issues):
        approved = [verdicts.get(int(pid)) == label for pid, label in zip(issues["product_id"], issues["label"])]
        issues = issues[~np.array(approved, dtype=bool)]
    products = {product.id: product for product in catalog.products(issues["product_id"].tolist())}
    issues = issues.assign(
        filename=[products[int(pid)].filename for pid in issues["product_id"]],
        label_source=[labels[int(pid)][1] for pid in issues["product_id"]],
    )
    statistics = {"labelled": int(len(ids)), "flagged": int(len(issues)), "folds": folds,
                  "seconds": round(time.perf_counter() - started, 2),
                  "out_of_sample_accuracy": float(np.mean(classes[probabilities.argmax(axis=1)] == current))}
    return issues[COLUMNS].reset_index(drop=True), statistics


def still_open(catalog: Catalog, issues: pd.DataFrame) -> pd.DataFrame:
    """The flagged rows nobody has handled since the check: not relabelled, not confirmed as right."""
    current, verdicts = catalog.current_labels(), catalog.label_verdicts()
    keep = [current.get(int(row.product_id)) == row.label and verdicts.get(int(row.product_id)) != row.label
            for row in issues.itertuples()]
    return issues[np.array(keep, dtype=bool)] if len(issues) else issues


def mark_label_right(catalog: Catalog, product_ids, author: str | None = None, seen=None) -> int:
    """Record that each product's label was checked by a person and is right; return how many.

    ``seen`` maps product ids to the label the person judged; a product relabelled
    by someone else since is not marked (it is judged again at the next check).
    """
    return catalog.set_label_verdicts(product_ids, author=author, seen=seen)


def use_suggestions(catalog: Catalog, issues: pd.DataFrame, author: str | None = None):
    """Give each flagged product its suggested label, as one undoable action.

    A product whose label changed since it was flagged is skipped and returned
    as a conflict. Returns ``(changed, conflicts)``.
    """
    return catalog.change_labels([(int(row.product_id), row.suggested_label, row.label)
                                  for row in issues.itertuples()], source="human", author=author)
