""""New category?": products that look like nothing anyone has labelled.

A classifier only knows the categories it was trained on, and its softmax shares
all the probability among them: with four apple varieties labelled, a banana is
an apple at 100%. Confidence alone cannot say "none of these"; distance can, and the
two miss different products. :class:`NoveltyDetector` models each labelled category
as a Gaussian in a low-dimensional principal subspace of the standardised features
(one covariance shared by all categories, shrunk towards a multiple of the identity)
and measures a product's Mahalanobis distance to the nearest category: a distance
that discounts the directions in which shots of one category always differ (light,
angle) and weighs those in which categories differ. Given the head's confidence in
each held-out labelled product, its score adds two standard scores: how the product's
distance, and how its confidence (as log-odds), compare with those of labelled products
scored by models that never saw them (for the distance: fitted without their own
series of near-identical shots, since a new photo of a known category is a new shot,
not a twin). Standard scores rather than ranks: a product far beyond every labelled
one stays far, however sure the head is. The threshold is the ``quantile`` of the
held-out labelled products' scores: the share of known products that would be flagged
if new photos looked like the old ones. A product below it is flagged; bulk acceptance
skips it.
``benchmarks/open_set.py`` measures how well each score separates known from unknown
categories on grocery val.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core._internal.memo import ArrayMemo
from core.model.head import NotFittedError

DEFAULT_QUANTILE = 0.01
# The principal subspace and the categories' Gaussians are learned from at most this many labelled products.
_FIT_SAMPLE = 20_000
# Held-out scores for the threshold: the series are found among at most this many (all pairs are compared).
_THRESHOLD_SAMPLE = 5000
_STATE = ("mean_", "scale_", "components_", "whitening_", "centres_", "threshold_")
# Mean and spread of held-out labelled products' distance and confidence log-odds (NaN: no confidences);
# a detector saved before them scores by the squared distance alone.
_REFERENCES = ("reference_",)
_LABEL_FREE = ArrayMemo(entries=2)


class NoveltyDetector:
    """Mahalanobis distance to the nearest labelled category, in a principal subspace, with the head's
    confidence beside it when :meth:`fit` is given held-out confidences.

    ``components`` (dimensions of the subspace) and ``shrinkage`` (of the shared
    covariance towards its average variance) were chosen with
    ``benchmarks/open_set.py``; ``folds`` series-aware folds give the held-out scores
    the threshold is the ``quantile`` of.
    """

    def __init__(self, quantile: float = DEFAULT_QUANTILE, components: int = 64, shrinkage: float | str = "auto",
                 group_threshold: float = 0.92, folds: int = 5, random_state: int = 0):
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
        if components < 1 or (shrinkage != "auto" and not 0.0 < float(shrinkage) <= 1.0) or folds < 2:
            raise ValueError(f"components must be at least 1, shrinkage 'auto' or in (0, 1] and folds at least 2; got "
                             f"{components}, {shrinkage}, {folds}")
        self.quantile = quantile
        self.components = components
        self.shrinkage = shrinkage
        self.group_threshold = group_threshold
        self.folds = folds
        self.random_state = random_state

    def fit(self, features: np.ndarray, labels, confidence: np.ndarray | None = None) -> "NoveltyDetector":
        """Learn the categories of the labelled products' ``features`` (n, dim) and ``labels``, and the threshold.

        ``confidence`` (n,): the head's top probability for each product it held out of its
        training (NaN for the others); without it the score is the distance's standard score alone.
        """
        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray([str(label) for label in labels], dtype=object)
        if features.ndim != 2 or len(features) != len(labels):
            raise ValueError(f"features must be (n, dim) with one label per row; got {features.shape} "
                             f"and {len(labels)} labels")
        if len(features) < 2:
            raise ValueError("the novelty threshold needs at least 2 labelled products")
        confidence = np.full(len(features), np.nan) if confidence is None else np.asarray(confidence, np.float64)
        if confidence.shape != (len(features),):
            raise ValueError(f"confidence must have one value (or NaN) per labelled product; got {confidence.shape}")
        rng = np.random.default_rng(self.random_state)
        if len(features) > _FIT_SAMPLE:
            keep = np.sort(rng.choice(len(features), _FIT_SAMPLE, replace=False))
            features, labels, confidence = features[keep], labels[keep], confidence[keep]
        self.mean_, self.scale_, self.components_, folds = _LABEL_FREE.get(
            [features], (self.components, self.group_threshold, self.folds, self.random_state),
            lambda: self._label_free(features, rng))
        standardised = (features - self.mean_) * self.scale_
        projected = standardised @ self.components_.T
        _, codes = np.unique(labels, return_inverse=True)
        self.whitening_, self.centres_ = self._gaussians(projected, codes)
        rows, distances = self._held_out_distances(standardised, codes, folds)
        both = np.isfinite(confidence[rows])
        known_distances = -np.sqrt(-distances.astype(np.float64))
        known_confidences = _log_odds(confidence[np.isfinite(confidence)])
        self.reference_ = np.array([known_distances.mean(), max(known_distances.std(), 1e-6),
                                    known_confidences.mean() if both.any() else np.nan,
                                    max(known_confidences.std(), 1e-6) if both.any() else np.nan])
        if not both.any():  # no product was held out by both: the distance alone
            both = np.ones(len(rows), bool)
        held_out = self._combined(distances[both], confidence[rows][both])
        self.threshold_ = float(np.quantile(held_out, self.quantile))
        return self

    def _gaussians(self, projected: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(whitening, centres)``: the shared covariance's inverse square root and each category's whitened mean."""
        present = np.unique(codes)
        sums = np.zeros((codes.max() + 1, projected.shape[1]))
        np.add.at(sums, codes, projected)
        means = sums[present] / np.bincount(codes)[present, None]
        residuals = projected - (sums / np.maximum(np.bincount(codes, minlength=len(sums)), 1)[:, None])[codes]
        covariance = residuals.T @ residuals / len(projected)
        average = np.trace(covariance) / len(covariance) if np.trace(covariance) > 0 else 1.0
        shrinkage = self.shrinkage
        if shrinkage == "auto":
            from sklearn.covariance import ledoit_wolf_shrinkage

            shrinkage = ledoit_wolf_shrinkage(residuals, assume_centered=True)
        covariance = (1 - shrinkage) * covariance + shrinkage * average * np.eye(len(covariance))
        values, vectors = np.linalg.eigh(covariance)
        whitening = (vectors / np.sqrt(np.maximum(values, 1e-12))).astype(np.float32)
        return whitening, (means @ whitening).astype(np.float32)

    def _label_free(self, features: np.ndarray, rng) -> tuple:
        """What the fit learns without the labels, so a retrain after corrections reuses it (see
        :class:`~core._internal.memo.ArrayMemo`): ``(mean, scale, principal axes, folds)``, where each
        fold is ``(held-out rows, the principal axes of the other rows)``. The folds keep each series
        of near-identical shots together, among at most ``_THRESHOLD_SAMPLE`` rows."""
        from core.curation.similarity import series_ids

        mean = features.mean(axis=0)
        scale = (1.0 / (features.std(axis=0) + 1e-3)).astype(np.float32)
        standardised = (features - mean) * scale
        axes = _principal_axes(standardised, min(self.components, len(features) - 1, features.shape[1]),
                               self.random_state)
        rows = np.arange(len(standardised))
        if len(rows) > _THRESHOLD_SAMPLE:
            rows = np.sort(rng.choice(len(rows), _THRESHOLD_SAMPLE, replace=False))
        # The head's hold-out split groups the same vectors by the same threshold: usually remembered.
        series = series_ids(features[rows], self.group_threshold)
        fold_of_series = rng.permutation(series.max() + 1) % self.folds
        folds = []
        for fold in range(self.folds):
            held = rows[fold_of_series[series] == fold]
            rest = np.setdiff1d(np.arange(len(standardised)), held)
            if len(held) and len(rest) >= 2:
                folds.append((held, _principal_axes(standardised[rest], min(len(axes), len(rest) - 1),
                                                    self.random_state)))
        return mean, scale, axes, folds

    def _held_out_distances(self, standardised, codes, folds) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, distances)``: labelled products' distances under a subspace and Gaussians fitted without
        their own series (a subspace that saw a series spans its quirks, and a new shot's look too close)."""
        scored, distances = [], []
        for held, axes in folds:
            rest = np.setdiff1d(np.arange(len(standardised)), held)
            # A category whose every product is in this fold cannot vouch for them: they are left out.
            held = held[np.isin(codes[held], codes[rest])]
            if not len(held):
                continue
            whitening, centres = self._gaussians(standardised[rest] @ axes.T, codes[rest])
            scored.append(held)
            distances.append(_nearest(standardised[held] @ axes.T @ whitening, centres))
        if not scored:  # every category is one series: nothing to measure a new shot by but the products
            rows = np.arange(len(standardised))
            return rows, _nearest(standardised @ self.components_.T @ self.whitening_, self.centres_)
        return np.concatenate(scored), np.concatenate(distances)

    def _combined(self, distances: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
        """The distance's standard score among held-out labelled products', plus the confidence's."""
        distance_mean, distance_spread, confidence_mean, confidence_spread = self.reference_
        known = (-np.sqrt(-np.asarray(distances, np.float64)) - distance_mean) / distance_spread
        if np.isfinite(confidence_mean):
            known = known + (_log_odds(confidence) - confidence_mean) / confidence_spread
        return known.astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("this NoveltyDetector is not fitted yet: call fit() with the labelled features "
                                 "and labels, or load()")

    def distance(self, features: np.ndarray, block: int = 8192) -> np.ndarray:
        """Each row's negated squared Mahalanobis distance to the nearest labelled category (higher: nearer)."""
        self._check_fitted()
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        transform = (self.components_.T @ self.whitening_).astype(np.float32)
        shift = (self.mean_ * self.scale_) @ transform
        return np.concatenate([_nearest((features[start:start + block] * self.scale_) @ transform - shift,
                                        self.centres_) for start in range(0, len(features), block)]
                              or [np.zeros(0, np.float32)])

    @property
    def needs_confidence(self) -> bool:
        """Whether :meth:`score` takes the head's confidence (it was fitted with held-out confidences)."""
        self._check_fitted()
        return self.reference_ is not None and bool(np.isfinite(self.reference_[2]))

    def score(self, features: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """How known each product looks, higher: more (see the module's description).

        ``confidence``: the head's top probability for each row, needed when
        :attr:`needs_confidence`.
        """
        distances = self.distance(features)
        if self.reference_ is None:  # saved before the standard scores: its threshold is on the distance itself
            return distances
        if self.needs_confidence:
            if confidence is None:
                raise ValueError("this detector also weighs the head's confidence: pass confidence= (the top "
                                 "probability of each product)")
            confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
            if len(confidence) != len(distances):
                raise ValueError(f"one confidence per product: got {len(confidence)} for {len(distances)}")
        return self._combined(distances, confidence)

    def is_new(self, features: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """True where nothing labelled looks like the product (a category nobody has labelled yet?)."""
        return self.score(features, confidence) < self.threshold_

    def save(self, path: str | os.PathLike) -> Path:
        """Write the learned state as one ``.npz`` (replaced atomically)."""
        self._check_fitted()
        from core.storage.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **{name: np.asarray(getattr(self, name)) for name in _STATE + _REFERENCES
                                    if getattr(self, name) is not None})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NoveltyDetector":
        detector = cls()
        with np.load(path, allow_pickle=False) as state:
            missing = [name for name in _STATE if name not in state]
            if missing:
                raise ValueError(f"{Path(path).name} is not a novelty detector (missing {', '.join(missing)})")
            for name in _STATE:
                setattr(detector, name, state[name])
            for name in _REFERENCES:
                setattr(detector, name, state[name] if name in state else None)
        detector.threshold_ = float(detector.threshold_)
        return detector


def _log_odds(probability) -> np.ndarray:
    probability = np.clip(np.asarray(probability, np.float64), 1e-6, 1 - 1e-6)
    return np.log(probability / (1 - probability))


def _nearest(whitened: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Negated squared distance of each whitened row to its nearest centre."""
    distances = (np.square(whitened).sum(axis=1)[:, None] - 2 * whitened @ centres.T
                 + np.square(centres).sum(axis=1)[None, :])
    return -np.maximum(distances.min(axis=1), 0.0).astype(np.float32)


def _principal_axes(standardised: np.ndarray, count: int, seed: int, oversample: int = 10,
                    power_iterations: int = 3) -> np.ndarray:
    """The ``count`` leading principal axes ``(count, dim)`` of the centred rows.

    Randomised range finding (Halko, Martinsson & Tropp): a few passes over the rows
    instead of a full SVD; the leading axes are all that is kept.
    """
    centred = standardised - standardised.mean(axis=0)
    width = min(count + oversample, *centred.shape)
    basis = centred @ np.random.default_rng(seed).standard_normal((centred.shape[1], width)).astype(np.float32)
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(basis)
        basis, _ = np.linalg.qr(centred @ (centred.T @ basis))
    _, _, axes = np.linalg.svd(basis.T @ centred, full_matrices=False)
    return axes[:count].astype(np.float32)
