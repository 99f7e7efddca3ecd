"""Suspicious labels: products whose label is probably wrong, found by confident learning.

Notation: ``y`` is a product's current label, ``P`` the ``(n, K)`` matrix of
*out-of-sample* predicted probabilities: each product's row comes from a
linear head trained on the other ``folds - 1`` folds of the labelled catalogue
(k-fold cross-validation on cached embeddings), so a wrong label cannot vouch
for itself. cleanlab's confident learning (:func:`cleanlab.filter.find_label_issues`)
estimates per-class thresholds from ``P`` and flags products whose label
disagrees with a confident prediction; each is ranked by its label quality
``P[i, y_i]`` (self-confidence, lowest first) and comes with the suggested
label ``argmax P[i]``. A person can answer "label is right": that verdict is
stored with the label it approved and the product is not flagged again unless
its label changes.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from core.errors import InvalidInputError, TrainingError
from core.model._ridge import fit_standardised_ridge_many, fit_temperature
from core.storage.catalog import Catalog

DEFAULT_FOLDS = 5
COLUMNS = ["product_id", "filename", "label", "label_source", "suggested_label", "label_quality",
           "suggested_probability"]


def _fold_assignment(targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified: every class's members are spread over the folds in random order."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(targets), dtype=np.int64)
    offset = 0
    for value in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == value))
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # small classes start on different folds
    return assignment


def out_of_sample_probabilities(features: np.ndarray, labels, folds: int = DEFAULT_FOLDS, l2: float = 0.1,
                                seed: int = 0, augmented_views=()) -> tuple[np.ndarray, np.ndarray]:
    """``(P (n, K), classes (K,))``: each row predicted by a head that never saw that product.

    The heads are the default closed-form linear head (class-weighted ridge,
    see :mod:`core.model.head`); one softmax temperature is fitted on all the
    out-of-sample scores. ``augmented_views`` (arrays shaped like ``features``)
    add training rows for the products in the training folds.
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
    assignment = _fold_assignment(targets, folds, seed)
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


def find_label_issues(labels, probabilities: np.ndarray, classes: np.ndarray) -> pd.DataFrame:
    """Rows flagged by confident learning, most suspicious first.

    Columns: ``index`` (row in the inputs), ``label``, ``suggested_label``,
    ``label_quality`` (P[i, y_i]) and ``suggested_probability``.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    labels = np.asarray([str(label) for label in labels], dtype=object)
    targets = np.searchsorted(classes, labels)
    if len(labels) == 0:
        return pd.DataFrame(columns=["index", "label", "suggested_label", "label_quality", "suggested_probability"])
    # n_jobs=1: cleanlab would otherwise fork a process pool, and a fork from a Streamlit script thread
    # can deadlock the server for good (forked children waiting on locks held by other threads).
    flagged = cleanlab_find_label_issues(targets, probabilities, return_indices_ranked_by="self_confidence",
                                         n_jobs=1)
    flagged = np.asarray(flagged, dtype=np.int64)
    # A category with a single product cannot be judged by its peers.
    counts = np.bincount(targets, minlength=len(classes))
    flagged = flagged[counts[targets[flagged]] >= 2]
    suggested = probabilities[flagged].argmax(axis=1)
    return pd.DataFrame({
        "index": flagged,
        "label": labels[flagged],
        "suggested_label": classes[suggested],
        "label_quality": probabilities[flagged, targets[flagged]],
        "suggested_probability": probabilities[flagged, suggested],
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
    probabilities, classes = out_of_sample_probabilities(features, current, folds=folds, seed=seed)
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
