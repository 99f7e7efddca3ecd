"""Classification metrics stored with every model version.

``classification_metrics(y_true, y_pred, classes)`` returns plain JSON-able
numbers: overall ``accuracy``, ``per_class`` precision/recall/support, and the
``confusion_matrix`` (rows = true class, columns = predicted class, in the order
of ``classes``), so the app can compare versions class by class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    classes = list(classes)
    if len(y_true) == 0:
        return {"accuracy": None, "n": 0, "per_class": {}, "confusion_matrix": [], "classes": classes}
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "n": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(classes, precision, recall, support)
        },
        "confusion_matrix": matrix.astype(int).tolist(),
        "classes": classes,
    }
