"""Closed-form linear classifier: class-weighted ridge regression onto one-hot targets.

With ``D`` the diagonal of per-row weights, ``X`` standardised features and
``T`` one-hot targets, both centred by their weighted means, the weights solve
``(X^T D X + lam I) W = X^T D T`` (one Gram matrix and one linear solve: well
under a second for 8,000 x 1,280 rows on 2 cores, no epochs, nothing to tune
but ``lam``) and ``b = mean(T) - mean(X) W``. The scores ``X W + b`` are turned
into probabilities by ``softmax(temperature * scores)``; the temperature is
fitted separately (:func:`fit_temperature`) on held-out scores.
"""

from __future__ import annotations

import numpy as np


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights ``n / (K * count_k)``: every class counts as much in total (absent classes: ``n / K``)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float32)
    return (len(targets) / (num_classes * np.maximum(counts, 1.0))).astype(np.float32)


def fit_standardised_ridge(features: np.ndarray, targets: np.ndarray, num_classes: int, l2: float,
                           augmented_views=(), balanced: bool = True
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, variance, weights, bias)``: standardise by ``features``' statistics, then :func:`fit_ridge`.

    ``augmented_views`` (arrays shaped like ``features``) are extra rows with the
    same targets; scores of new rows are ``((x - mean) / sqrt(variance)) @ weights + bias``.
    """
    mean, variance = features.mean(axis=0), features.var(axis=0) + 1e-6
    rows = np.concatenate([features] + [np.asarray(view) for view in augmented_views])
    row_targets = np.tile(targets, 1 + len(augmented_views))
    row_weights = (balanced_class_weights(row_targets, num_classes)[row_targets] if balanced
                   else np.ones(len(row_targets), np.float32))
    weights, bias = fit_ridge((rows - mean) / np.sqrt(variance), row_targets, num_classes, row_weights, l2)
    return mean, variance, weights, bias


def fit_ridge(features: np.ndarray, targets: np.ndarray, num_classes: int, sample_weight: np.ndarray,
              l2: float) -> tuple[np.ndarray, np.ndarray]:
    """``(weights (dim, num_classes), bias (num_classes,))``; ``l2`` is per unit of total weight."""
    features = np.asarray(features, dtype=np.float32)
    weight = np.asarray(sample_weight, dtype=np.float32)
    total = float(weight.sum())
    one_hot = np.zeros((len(targets), num_classes), dtype=np.float32)
    one_hot[np.arange(len(targets)), targets] = 1.0
    feature_mean = (weight @ features) / total
    target_mean = (weight @ one_hot) / total
    centred = features - feature_mean
    weighted = centred * weight[:, None]
    gram = weighted.T @ centred
    gram[np.diag_indices_from(gram)] += l2 * total
    weights = np.linalg.solve(gram.astype(np.float64), (weighted.T @ (one_hot - target_mean)).astype(np.float64))
    weights = weights.astype(np.float32)
    return weights, (target_mean - feature_mean @ weights).astype(np.float32)


def fit_temperature(scores: np.ndarray, targets: np.ndarray, low: float = 0.1, high: float = 200.0) -> float:
    """The ``t`` minimising the mean negative log-likelihood of ``softmax(t * scores)`` (golden section)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(targets))

    def nll(log_t):
        logits = np.exp(log_t) * scores
        logits -= logits.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[rows, targets]))

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(40):
        if nll(c) < nll(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(np.exp((a + b) / 2))
