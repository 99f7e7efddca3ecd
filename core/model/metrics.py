"""Classification metrics stored with every model version.

``classification_metrics(y_true, y_pred, classes)`` returns plain JSON-able
numbers: overall ``accuracy``, ``per_class`` precision/recall/support, and the
``confusion_matrix`` (rows = true class, columns = predicted class, in the order
of ``classes``), so the app can compare versions class by class; given the
confidences, also ``calibration`` (see :func:`reliability`): how often "90% sure"
is right, for the Train page's reliability diagram.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str],
                           confidences: Sequence[float] | None = None) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    classes = list(classes)
    if len(y_true) == 0:
        return {"accuracy": None, "n": 0, "per_class": {}, "confusion_matrix": [], "classes": classes}
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    extra = {} if confidences is None else {"calibration": reliability(confidences, y_true == y_pred)}
    return {**extra,
        "accuracy": float(np.mean(y_true == y_pred)),
        "n": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(classes, precision, recall, support)
        },
        "confusion_matrix": matrix.astype(int).tolist(),
        "classes": classes,
    }


def compare_versions(previous: dict | None, current: dict) -> list[dict]:
    """Per-category recall of two versions' validation metrics, biggest change first.

    Each row: ``category``, ``before`` (None for a new category), ``after``,
    ``change``. Recall is the share of a category's products the model gets right,
    which is what a merchandiser feels.
    """
    before = (previous or {}).get("per_class", {})
    rows = []
    for category, values in current.get("per_class", {}).items():
        if values.get("support", 0) == 0:
            continue
        old = before.get(category)
        old_recall = old["recall"] if old and old.get("support", 0) else None
        rows.append({"category": category, "before": old_recall, "after": values["recall"],
                     "change": None if old_recall is None else values["recall"] - old_recall})
    rows.sort(key=lambda row: -(abs(row["change"]) if row["change"] is not None else 0))
    return rows


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """How far confidence is from accuracy: the bin-weighted mean |accuracy − confidence| over equal-width bins.

    0 means "90% confident" is right 90% of the time; the usual 15 bins.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0:
        return 0.0
    which = np.minimum((confidences * bins).astype(int), bins - 1)
    gap = 0.0
    for number in np.unique(which):
        members = which == number
        gap += members.mean() * abs(correct[members].mean() - confidences[members].mean())
    return float(gap)


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = 15) -> dict:
    """``{"ece", "bins"}``: the expected calibration error and, per non-empty equal-width confidence bin,
    ``low``, ``high``, ``n``, mean ``confidence`` and ``accuracy`` (a reliability diagram's bars)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} outcomes")
    which = np.minimum((confidences * bins).astype(int), bins - 1)
    rows = [{"low": number / bins, "high": (number + 1) / bins, "n": int((which == number).sum()),
             "confidence": float(confidences[which == number].mean()),
             "accuracy": float(correct[which == number].mean())} for number in np.unique(which)]
    return {"ece": expected_calibration_error(confidences, correct, bins), "bins": rows}
