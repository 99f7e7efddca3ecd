""""New category?": products that look like nothing anyone has labelled.

A classifier only knows the categories it was trained on, and its softmax shares
all the probability among them: with four apple varieties labelled, a banana is
an apple at 100%. Confidence cannot say "none of these"; distance can.
:class:`NoveltyDetector` keeps the labelled products' feature vectors and scores
a product by its cosine similarity to the most similar one. Its threshold comes
from the labelled products themselves: each one's similarity to its nearest
labelled product *outside its own series of near-identical shots* (a new photo
of a known category is a new shot, not a twin), and the ``quantile`` of those
(the share of known products that would be flagged if new photos looked like
the old ones). A product below the threshold is flagged; bulk acceptance skips
it. ``benchmarks/open_set.py`` measures how well the score separates known from
unknown categories on grocery val.
"""

from __future__ import annotations

import numpy as np

from core.model.head import NotFittedError

DEFAULT_QUANTILE = 0.01
# Threshold estimation compares labelled products with each other: a random sample of this many is enough.
_THRESHOLD_SAMPLE = 5000


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class NoveltyDetector:
    def __init__(self, quantile: float = DEFAULT_QUANTILE, group_threshold: float = 0.92, random_state: int = 0):
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
        self.quantile = quantile
        self.group_threshold = group_threshold
        self.random_state = random_state

    def fit(self, features: np.ndarray) -> "NoveltyDetector":
        """Learn the threshold from the labelled products' ``features`` (n, dim) and keep them as references."""
        references = _normalised(features)
        if references.ndim != 2 or len(references) < 2:
            raise ValueError("the novelty threshold needs at least 2 labelled products")
        self.references_ = references
        self.threshold_ = threshold(references, self.quantile, self.group_threshold, self.random_state)
        return self

    @classmethod
    def with_threshold(cls, references: np.ndarray, threshold: float) -> "NoveltyDetector":
        """A detector with a threshold learned earlier (stored with a model version) and today's references."""
        detector = cls()
        detector.references_ = _normalised(references)
        detector.threshold_ = float(threshold)
        return detector

    def similarity(self, features: np.ndarray, block: int = 4096) -> np.ndarray:
        """Each row's cosine similarity to the most similar labelled product."""
        if not hasattr(self, "references_"):
            raise NotFittedError("this NoveltyDetector is not fitted yet: call fit() with the labelled features")
        vectors = _normalised(features)
        return np.concatenate([(vectors[start:start + block] @ self.references_.T).max(axis=1)
                               for start in range(0, len(vectors), block)] or [np.zeros(0, np.float32)])

    def is_new(self, features: np.ndarray) -> np.ndarray:
        """True where nothing labelled looks like the product (a category nobody has labelled yet?)."""
        return self.similarity(features) < self.threshold_


def threshold(references: np.ndarray, quantile: float, group_threshold: float = 0.92, seed: int = 0) -> float:
    """The ``quantile`` of labelled products' similarity to their nearest labelled product in another series."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    references = _normalised(references)
    rows = np.arange(len(references))
    if len(rows) > _THRESHOLD_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), _THRESHOLD_SAMPLE, replace=False))
    sample = references[rows]
    scores = sample @ sample.T
    # The series (near-duplicate groups) from the same similarities: one matrix product, not two.
    groups = connected_components(sparse.csr_matrix(scores >= group_threshold), directed=False)[1]
    scores[groups[:, None] == groups[None, :]] = -np.inf  # itself and its own series do not count
    nearest = scores.max(axis=1)
    nearest = nearest[np.isfinite(nearest)]
    if not len(nearest):  # every labelled product is one series: nothing to measure a new shot by
        return float(group_threshold)
    return float(np.quantile(nearest, quantile))
