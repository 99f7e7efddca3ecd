"""Closed-form linear classifier: class-weighted ridge regression onto one-hot targets.

With ``D`` the diagonal of per-row weights, ``X`` standardised features and
``T`` one-hot targets, both centred by their weighted means, the weights solve
``(X^T D X + lam I) W = X^T D T`` (one Gram matrix and one Cholesky solve, no
epochs, nothing to tune but ``lam``, per unit of total weight) and
``b = mean(T) - mean(X) W``. The scores ``X W + b`` are turned
into probabilities by ``softmax(temperature * scores)``; the temperature is
fitted separately (:func:`fit_temperature`) on held-out scores.

Training asks for several fits on overlapping rows (a hold-out fit and the refit on
everything; k folds). :func:`fit_standardised_ridge_many` computes the Gram
matrix of all rows once and subtracts each held-out part's (which costs its share
of rows), so k fits cost about one Gram matrix plus k Cholesky solves instead of
k Gram matrices: what keeps retraining on 3,632-dimensional features in seconds.
"""

from __future__ import annotations

import numpy as np


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights ``n / (K * count_k)``: every class counts as much in total (absent classes: ``n / K``)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float32)
    return (len(targets) / (num_classes * np.maximum(counts, 1.0))).astype(np.float32)


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


def fit_standardised_ridge_many(features: np.ndarray, targets: np.ndarray, num_classes: int, l2: float,
                                held_out: list[np.ndarray], augmented_views=(), balanced: bool = True
                                ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``(mean, variance, [(weights, bias) per entry of held_out])``.

    Fit ``i`` uses every product except the indices ``held_out[i]`` (disjoint sets;
    an empty array: every product), with their augmented views (arrays shaped like
    ``features``: extra rows with the same targets). All fits share the
    standardisation (statistics of all ``features``: no labels involved) and the
    class weights (from all rows), which is what lets them share one Gram matrix:
    rows are laid out so that each held-out set's rows are contiguous, each part's
    moments are computed once, and everything's are their sum. Scores of new rows
    are ``((x - mean) / sqrt(variance)) @ weights + bias``.
    """
    import scipy.linalg

    features = np.asarray(features, dtype=np.float32)
    count, dim = features.shape
    parts = [np.asarray(products, dtype=np.int64) for products in held_out]
    covered = np.zeros(count, dtype=bool)
    for products in parts:
        if covered[products].any():
            raise ValueError("held-out sets must not overlap")
        covered[products] = True
    order = np.concatenate([np.flatnonzero(~covered)] + parts)
    bounds = np.cumsum([0, int((~covered).sum())] + [len(products) for products in parts])
    blocks = [features] + [np.asarray(view, dtype=np.float32) for view in augmented_views]
    per_product = len(blocks)

    mean, variance = features.mean(axis=0), features.var(axis=0) + 1e-6
    scale = (1.0 / np.sqrt(variance)).astype(np.float32)
    row_targets = np.repeat(targets[order], per_product)
    row_weights = (balanced_class_weights(row_targets, num_classes)[row_targets] if balanced
                   else np.ones(len(row_targets), np.float32))
    # Rows scaled by sqrt(weight): the weighted Gram matrix is then rows^T rows, which numpy
    # computes as a symmetric rank-k update (half a general matrix product's work).
    root = np.sqrt(row_weights)
    rows = np.empty((count, per_product, dim), dtype=np.float32)
    for index, block in enumerate(blocks):
        rows[:, index] = (block[order] - mean) * scale
    rows = rows.reshape(-1, dim)
    rows *= root[:, None]
    one_hot = np.zeros((len(row_targets), num_classes), dtype=np.float32)
    one_hot[np.arange(len(row_targets)), row_targets] = root

    def moments(first, last):
        chosen, targets_root, chosen_root = (array[first * per_product:last * per_product]
                                             for array in (rows, one_hot, root))
        return [chosen.T @ chosen, chosen_root @ chosen, float(chosen_root @ chosen_root),
                chosen.T @ targets_root, chosen_root @ targets_root]

    part_moments = [moments(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    everything = [sum(values) for values in zip(*part_moments)]
    solutions = []
    for number, products in enumerate(parts):
        if len(products):
            gram, row_sum, total, cross, target_sum = (a - b for a, b in zip(everything, part_moments[number + 1]))
        else:
            gram, row_sum, total, cross, target_sum = everything
        feature_mean, target_mean = row_sum / total, target_sum / total
        # Centred by the weighted means: sum w (x - mu)(x - mu)^T = sum w x x^T - total mu mu^T.
        # float32 throughout: the ridge term keeps the system well conditioned (standardised
        # features, l2 * total on the diagonal), and float64 would double the solve's time.
        centred = gram - np.float32(total) * np.outer(feature_mean, feature_mean)
        centred[np.diag_indices_from(centred)] += np.float32(l2 * total)
        right = cross - np.float32(total) * np.outer(feature_mean, target_mean)
        weights = scipy.linalg.cho_solve(scipy.linalg.cho_factor(centred, overwrite_a=True, check_finite=False),
                                         right, overwrite_b=True, check_finite=False).astype(np.float32)
        solutions.append((weights, (target_mean - feature_mean @ weights).astype(np.float32)))
    return mean, variance, solutions
