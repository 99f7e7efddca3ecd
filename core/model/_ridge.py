"""Closed-form linear classifier: class-weighted ridge regression onto one-hot targets.

With ``D`` the diagonal of per-row weights, ``X`` standardised features and
``T`` one-hot targets, both centred by their weighted means, the weights solve
``(X^T D X + lam I) W = X^T D T`` (one Gram matrix and one Cholesky solve, no
epochs, nothing to tune but ``lam``, per unit of total weight) and
``b = mean(T) - mean(X) W``. The scores ``X W + b`` are turned
into probabilities by ``softmax(temperature * scores)``; the temperature is
fitted separately (:func:`fit_temperature`) on held-out scores.

Augmented views (crops of a product's photo: extra rows with the product's
target) can be given as rows, or summarised: with ``m_i`` the mean of product
``i``'s ``1 + V`` rows and ``S_i = sum_j (z_ij - m_i)(z_ij - m_i)^T`` their scatter
around it, the rows' weighted Gram matrix is exactly
``(1 + V) sum_i w_i (m_i - mu)(m_i - mu)^T + sum_i w_i S_i`` and their cross
product with the targets ``(1 + V) sum_i w_i (m_i - mu) t_i^T``. Given the
``m_i`` and ``sum_i w_i S_i`` (cached per catalogue, see :mod:`core.model.view_scatter`),
a fit needs one row per product: the same weights from a ``1 + V`` times smaller
Gram matrix.

Training asks for several fits on overlapping rows (a hold-out fit and the refit on
everything; k folds). :func:`fit_standardised_ridge_many` computes each held-out
part's moments and the rest's once; a fit's are their sum less its own part (or
just the rest, for a single hold-out), so k fits cost about one Gram matrix plus k
Cholesky solves instead of k Gram matrices.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse as _sparse

# Rows per block a streamed fit converts and sums at a time (float32 blocks, float64 sums).
_BLOCK = 2048


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


def cap_temperature(scores: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """``temperature``, lowered until the mean confidence on these products is at most Laplace's estimate of
    their accuracy, ``(right + 1) / (n + 2)``.

    A few held-out products all predicted right make the likelihood-optimal
    temperature run to its bound and every confidence to 100%; they are evidence of
    an accuracy near ``(n + 1) / (n + 2)``, not of certainty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return float(temperature)
    ceiling = (float(np.sum(scores.argmax(axis=1) == targets)) + 1.0) / (len(scores) + 2.0)

    def mean_confidence(t):
        logits = t * (scores - scores.max(axis=1, keepdims=True))
        return float(np.mean(1.0 / np.exp(logits).sum(axis=1)))

    if mean_confidence(temperature) <= ceiling:
        return float(temperature)
    low, high = 0.0, float(temperature)  # confidence grows with the temperature: bisect
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_confidence(middle) <= ceiling else (low, middle)
    return low


def product_weights(targets: np.ndarray, num_classes: int, balanced: bool = True) -> np.ndarray:
    """Each product's weight in a fit: :func:`balanced_class_weights` of its class, or 1."""
    if not balanced:
        return np.ones(len(targets), np.float32)
    return balanced_class_weights(targets, num_classes)[targets]


def fit_standardised_ridge_many(features: np.ndarray, targets: np.ndarray, num_classes: int, l2: float,
                                held_out: list[np.ndarray], augmented_views=(), balanced: bool = True,
                                view_means: np.ndarray | None = None,
                                view_scatter: tuple[list[np.ndarray | None], int] | None = None
                                ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``(mean, variance, [(weights, bias) per entry of held_out])``.

    Fit ``i`` uses every product except the indices ``held_out[i]`` (disjoint sets;
    an empty array: every product), with their augmented views (arrays shaped like
    ``features``: extra rows with the same targets). All fits share the
    standardisation (statistics of all ``features``: no labels involved) and the
    class weights (from all rows), which is what lets them share one Gram matrix:
    rows are laid out so that each held-out set's rows are contiguous, each part's
    moments are computed once, and everything's are their sum.

    Views summarised instead of as rows: ``view_means`` (shaped like ``features``)
    holds each product's mean over its photo and ``views`` views, and
    ``view_scatter=(scatters, views)`` the views' weighted scatter ``sum w_i S_i``
    in raw feature units, ``(dim, dim)``, with ``w`` = :func:`product_weights`:
    ``scatters[0]`` over all products, ``scatters[1 + p]`` over ``held_out[p]``
    (``None`` for an empty set). ``features`` then only standardise. Scores of new
    rows are ``((x - mean) / sqrt(variance)) @ weights + bias``.
    """
    features = np.asarray(features, dtype=np.float32)
    count, dim = features.shape
    parts = [np.asarray(products, dtype=np.int64) for products in held_out]
    order, bounds = _layout(count, parts)
    mean, variance = features.mean(axis=0), features.var(axis=0) + 1e-6
    scale = (1.0 / np.sqrt(variance)).astype(np.float32)
    blocks, rows_per_product = _row_blocks(features, augmented_views, view_means, view_scatter, len(parts))
    rows, one_hot, root, shift = _weighted_rows(blocks, rows_per_product, order, targets, num_classes, balanced,
                                                mean, scale)
    per_product = len(blocks)

    def moments(first, last):
        chosen, targets_root, chosen_root = (array[first * per_product:last * per_product]
                                             for array in (rows, one_hot, root))
        return [chosen.T @ chosen, chosen_root @ chosen, float(chosen_root @ chosen_root),
                chosen.T @ targets_root, chosen_root @ targets_root]

    # parts: 0 = products in every fit, 1 + p = held_out[p]; None for an empty one.
    part_moments = [moments(bounds[i], bounds[i + 1]) if bounds[i + 1] > bounds[i] else None
                    for i in range(len(bounds) - 1)]
    if view_scatter is not None:
        _add_view_scatter(part_moments, view_scatter[0], scale)
    present = [values for values in part_moments if values is not None]
    everything = [functools.reduce(np.add, values) for values in zip(*present)]
    solutions = []
    for number, products in enumerate(parts):
        others = [values for index, values in enumerate(part_moments) if index != number + 1 and values is not None]
        if not len(products):
            fit_moments = everything if number + 1 == len(parts) else [everything[0].copy(), *everything[1:]]
        elif len(others) == 1:
            # The fit's rows are exactly one part (the usual hold-out fit): its moments as they are
            # (used up here: with two parts no other fit needs this one on its own).
            fit_moments = others[0]
        else:
            fit_moments = [a - b for a, b in zip(everything, part_moments[number + 1])]
        # Every row's weighted mean is the shift already, so the fit on everything needs no centring.
        solutions.append(_solve(fit_moments, l2, shift, centre=bool(len(products))))
    return mean, variance, solutions


def _layout(count: int, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row order (products in every fit first, then each held-out set contiguously) and the part bounds."""
    covered = np.zeros(count, dtype=bool)
    for products in parts:
        if covered[products].any():
            raise ValueError("held-out sets must not overlap")
        covered[products] = True
    order = np.concatenate([np.flatnonzero(~covered)] + parts)
    bounds = np.cumsum([0, int((~covered).sum())] + [len(products) for products in parts])
    return order, bounds


def _row_blocks(features, augmented_views, view_means, view_scatter, held_out_sets: int):
    """The per-product row blocks and how many rows each product stands for."""
    dim = features.shape[1]
    if (view_scatter is None) != (view_means is None):
        raise ValueError("view_scatter and view_means come together")
    if view_scatter is None:
        blocks = [features] + [np.asarray(view, dtype=np.float32) for view in augmented_views]
        return blocks, len(blocks)
    scatters, views = view_scatter
    view_means = np.asarray(view_means, dtype=np.float32)
    if len(augmented_views):
        raise ValueError("give augmented views either as rows (augmented_views) or summarised (view_scatter)")
    if view_means.shape != features.shape or len(scatters) != 1 + held_out_sets or \
            any(part is not None and part.shape != (dim, dim) for part in scatters) or scatters[0] is None:
        raise ValueError(f"view_means must be shaped like features and view_scatter hold one ({dim}, {dim}) "
                         f"matrix for all products and one per held-out set")
    # A product's mean stands for its 1 + views rows.
    return [view_means], 1 + int(views)


def _weighted_rows(blocks, rows_per_product, order, targets, num_classes, balanced, mean, scale):
    """Standardised rows times sqrt(weight), centred on their weighted mean, and the matching targets.

    With rows scaled by sqrt(weight) the weighted Gram matrix is rows^T rows, which numpy
    computes as a symmetric rank-k update (half a general matrix product's work).
    """
    count, dim = len(order), blocks[0].shape[1]
    per_product = len(blocks)
    row_targets = np.repeat(targets[order], per_product)
    row_weights = np.repeat(product_weights(targets[order], num_classes, balanced), per_product)
    row_weights *= np.float32(rows_per_product / per_product)
    root = np.sqrt(row_weights)
    rows = np.empty((count, per_product, dim), dtype=np.float32)
    for index, block in enumerate(blocks):
        rows[:, index] = (block[order] - mean) * scale
    rows = rows.reshape(-1, dim)
    # Centred on the weighted mean of every row: the fit on everything then needs no
    # correction of its Gram matrix, the others a rank-one one.
    shift = (row_weights @ rows) / row_weights.sum()
    rows -= shift
    rows *= root[:, None]
    one_hot = np.zeros((len(row_targets), num_classes), dtype=np.float32)
    one_hot[np.arange(len(row_targets)), row_targets] = root
    return rows, one_hot, root, shift


def _add_view_scatter(part_moments, scatters, scale) -> None:
    """The views' scatter, standardised, joins the Gram matrix of the part it belongs to."""
    standardise = np.outer(scale, scale)
    part_scatters = [scatters[0] - sum(part for part in scatters[1:] if part is not None)] + scatters[1:]
    for moments_of_part, scatter in zip(part_moments, part_scatters):
        if moments_of_part is not None and scatter is not None:
            moments_of_part[0] += scatter * standardise


def _solve(fit_moments, l2: float, shift: np.ndarray, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(weights, bias)`` of the ridge fit with these moments (its Gram matrix is used up)."""
    import scipy.linalg

    gram, row_sum, total, cross, target_sum = fit_moments
    feature_mean, target_mean = row_sum / total, target_sum / total
    # Centred by the weighted means: sum w (x - mu)(x - mu)^T = sum w x x^T - total mu mu^T.
    # float32 throughout: the ridge term keeps the system well conditioned (standardised
    # features, l2 * total on the diagonal), and float64 would double the solve's time.
    centred = gram
    if centre:
        centred -= np.float32(total) * np.outer(feature_mean, feature_mean)
    centred[np.diag_indices_from(centred)] += np.float32(l2 * total)
    right = cross - np.float32(total) * np.outer(feature_mean, target_mean)
    # The transpose of a symmetric C-ordered matrix is itself in Fortran order: LAPACK factors it
    # in place instead of copying it first.
    factor = scipy.linalg.cho_factor(centred.T, overwrite_a=True, check_finite=False)
    weights = scipy.linalg.cho_solve(factor, right, overwrite_b=True, check_finite=False).astype(np.float32)
    return weights, (target_mean - (feature_mean + shift) @ weights).astype(np.float32)


def streamed_ridge(chunks, targets: np.ndarray, weights: np.ndarray, held_out: np.ndarray, num_classes: int,
                   l2: float, refit: bool = True) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """:func:`fit_standardised_ridge_many` with one held-out set, from ``(rows, vectors)`` chunks.

    ``chunks`` yields row indices (into ``targets``, ``weights``, ``held_out``) and
    their raw vectors; every row once. ``(mean, variance, [hold-out fit, refit on
    everything])``, the same numbers the in-memory fit gives (up to rounding). Each
    part's weighted moments are summed about a fixed shift (the first chunk's mean,
    so that float32 products of nearly equal vectors keep their digits) in float64;
    the standardisation and the centring by the weighted mean are applied to the sums
    afterwards, as they are linear.
    """
    shift = None
    count, plain_sum, plain_squares = 0, None, None
    parts = [None, None]  # [rows in every fit, held-out rows]: gram, row sum, total, cross, target sum
    scratch = None  # one chunk-sized buffer, reused: a fresh 300 MB temporary per step cost more than the Gram
    for rows, vectors in chunks:
        vectors = np.asarray(vectors)  # float32, or float16 as stored: converted into the buffer below
        if shift is None:
            shift = vectors.mean(axis=0, dtype=np.float32)
            dim = vectors.shape[1]
            plain_sum, plain_squares = np.zeros(dim), np.zeros(dim)
            parts = [[np.zeros((dim, dim)), np.zeros(dim), 0.0, np.zeros((dim, num_classes)), np.zeros(num_classes)]
                     for _ in range(2)]
        if scratch is None or len(scratch) < len(rows):
            scratch = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
        count += len(rows)
        for part, chosen in enumerate((~held_out[rows], held_out[rows])):
            if not chosen.any():
                continue
            index = np.flatnonzero(chosen)
            part_rows, part_vectors = rows[index], scratch[:len(index)]
            for first in range(0, len(index), _BLOCK):  # the part's rows, float32, shifted; float64 sums
                block = part_vectors[first:first + _BLOCK]
                block[...] = vectors[index[first:first + _BLOCK]]
                block -= shift
                plain_sum += block.sum(axis=0)
                plain_squares += np.einsum("ij,ij->j", block, block).astype(np.float64)
            row_weights = weights[part_rows].astype(np.float32)
            moments = parts[part]
            moments[1] += row_weights @ part_vectors
            moments[2] += float(row_weights.sum(dtype=np.float64))
            # Cross product with one-hot targets: each class's weighted row sum, as a sparse product.
            part_targets = targets[part_rows]
            one_hot = _sparse.csr_matrix((row_weights, (part_targets, np.arange(len(part_rows)))),
                                         shape=(num_classes, len(part_rows)))
            moments[3] += (one_hot @ part_vectors).T
            moments[4] += np.bincount(part_targets, weights=row_weights, minlength=num_classes)
            part_vectors *= np.sqrt(row_weights)[:, None]  # rows scaled by sqrt(weight): the Gram is rooted^T rooted
            moments[0] += part_vectors.T @ part_vectors
    if shift is None or count != len(targets):
        raise ValueError(f"the chunks held {count} rows for {len(targets)} targets")
    offset = plain_sum / count
    mean = (shift + offset).astype(np.float32)
    variance = (plain_squares / count - offset ** 2 + 1e-6).astype(np.float32)
    scale = 1.0 / np.sqrt(variance.astype(np.float64))
    total = parts[0][2] + parts[1][2]
    weighted_mean = (parts[0][1] + parts[1][1]) / total  # of the shifted rows
    standardised = []
    for gram, row_sum, part_total, cross, target_sum in parts:
        if not part_total:
            standardised.append(None)
            continue
        # Moments of the rows standardised and centred on the weighted mean of every row.
        centred_gram = (gram - np.outer(row_sum, weighted_mean) - np.outer(weighted_mean, row_sum)
                        + part_total * np.outer(weighted_mean, weighted_mean))
        standardised.append([(centred_gram * np.outer(scale, scale)).astype(np.float32),
                             (scale * (row_sum - part_total * weighted_mean)).astype(np.float32), part_total,
                             (scale[:, None] * (cross - np.outer(weighted_mean, target_sum))).astype(np.float32),
                             target_sum.astype(np.float32)])
    centre_shift = ((weighted_mean + shift - mean) * scale).astype(np.float32)
    solutions = []
    if standardised[0] is None:
        raise ValueError("every product is held out: nothing to fit on")
    if refit:
        everything = [standardised[0][0] + (standardised[1][0] if standardised[1] else 0)] + [
            sum(values[index] for values in standardised if values is not None) for index in range(1, 5)]
    solutions.append(_solve(standardised[0], l2, centre_shift, centre=True))
    if refit:
        solutions.append(_solve(everything, l2, centre_shift, centre=False))
    return mean, variance, solutions
