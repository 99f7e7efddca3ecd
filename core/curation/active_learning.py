"""Which products a person should label next: acquisition strategies with a diversity guard.

Notation: ``P`` is an ``(n, k)`` matrix of predicted probabilities per product,
either over all classes or the stored top-k (then the missing mass ``1 - sum``
counts as one extra outcome for the entropy); ``x`` are L2-normalised
embeddings, ``s(i, j) = x_i . x_j``. ``margin`` ranks by ``p(1) - p(2)`` (the
gap between the two best guesses, smallest first), ``entropy`` by
``-sum p log p`` (largest first), ``random`` by a seeded shuffle. The default,
``hybrid``, picks greedily by
``typicality_i * sqrt(1 - margin_i) * (1 - max_j s(i, j))``
over already labelled (or already picked) ``j``: a product the model is unsure
about, that looks like many others (its label teaches about all of them), and
that no label covers yet. Optionally (``coverage_similarity``) also by
``sqrt(1 + reach_i)``, where ``reach_i`` counts the unlabelled products its label
would reach through near-duplicate propagation (similarity at least
``COVERAGE_SIMILARITY`` and no labelled product that close yet, see
:func:`core.model.training.propagated_labels`); off by default, as it did not
pay once propagation demanded a margin. With propagation, on the grocery
benchmark it needs less than half the labels random picking needs
(``benchmarks/label_efficiency.py``); plain uncertainty sampling does worse than
random there, because near-identical shots crowd the uncertain end of the
ranking. Uncertain products in a catalogue of near-identical shots come in
clumps, so :func:`diverse_order` walks the ranking and defers a product whose
feature cosine similarity to one already on the current page is at least
``similarity_threshold``: each page of ``page_size`` shows different products,
and deferred ones follow on later pages (nothing is dropped). With no model
yet, :func:`coverage_order` picks products spread over feature space
(greedy farthest point), the best first labels for a new catalogue.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.curation.similarity import close_pairs

STRATEGIES = ("hybrid", "margin", "entropy", "random")
DEFAULT_STRATEGY = "hybrid"
DEFAULT_SIMILARITY_THRESHOLD = 0.9
TYPICALITY_NEIGHBOURS = 20
# The training's propagation threshold (core.model.training.DEFAULT_PROPAGATION_THRESHOLD; a test keeps
# them equal): a label reaches the unlabelled products at least this similar.
COVERAGE_SIMILARITY = 0.85
# Above this many candidates the reach term is left out: its neighbour lists cost about as much as
# typicality does, and the Review queue is recomputed on a rerun.
COVERAGE_UP_TO = 5_000
# Typicality is measured against at most this many reference products (bounded cost on big catalogues).
_TYPICALITY_SAMPLE = 4000


def padded(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stored top-k probabilities (lists, possibly of different lengths or empty) as one ``(n, k)``
    matrix, zeros where a row is shorter: what :func:`uncertainty` scores."""
    width = max([len(values) for values in rows] + [1])
    matrix = np.zeros((len(rows), width))
    for row, values in enumerate(rows):
        matrix[row, :len(values)] = values
    return matrix


def uncertainty(probabilities: np.ndarray, strategy: str = DEFAULT_STRATEGY, seed: int = 0) -> np.ndarray:
    """One score per row; higher = more worth a person's look."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (n, k), got shape {probabilities.shape}")
    n = len(probabilities)
    if strategy == "random":
        return np.random.default_rng(seed).random(n)
    if probabilities.shape[1] == 0:
        return np.zeros(n)
    ordered = -np.sort(-probabilities, axis=1)
    if strategy in ("margin", "hybrid"):
        second = ordered[:, 1] if ordered.shape[1] > 1 else np.clip(1.0 - ordered[:, 0], 0.0, 1.0)
        return -(ordered[:, 0] - second)
    rest = np.clip(1.0 - probabilities.sum(axis=1, keepdims=True), 0.0, 1.0)
    outcomes = np.concatenate([probabilities, rest], axis=1)
    return -(outcomes * np.log(np.clip(outcomes, 1e-12, 1.0))).sum(axis=1)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def diverse_order(ranking: Sequence[int], features: np.ndarray, page_size: int,
                  similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                  limit: int | None = None) -> np.ndarray:
    """Reorder row indices ``ranking`` (best first) so no page holds two near-identical products.

    ``features`` is indexed by row. Only the first ``limit`` positions are
    diversified (default: all); the rest keep their ranking order.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    ranking = np.asarray(ranking, dtype=np.int64)
    limit = len(ranking) if limit is None else min(int(limit), len(ranking))
    vectors = _normalise(features)
    remaining = list(ranking)
    ordered: list[int] = []
    while remaining and len(ordered) < limit:
        page: list[int] = []
        deferred: list[int] = []
        for position, row in enumerate(remaining):
            if page and float(np.max(vectors[page] @ vectors[row])) >= similarity_threshold:
                deferred.append(row)
                continue
            page.append(row)
            if len(page) == page_size:
                deferred.extend(remaining[position + 1:])
                break
        ordered.extend(page)
        remaining = deferred
    return np.array(ordered + remaining, dtype=np.int64)


def coverage_order(features: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` row indices spread over feature space (greedy farthest point, cosine distance)."""
    vectors = _normalise(features)
    n = len(vectors)
    count = min(int(count), n)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    # Start at the product nearest the centre: a typical photo, not an outlier.
    first = int(np.argmax(vectors @ _normalise(vectors.mean(axis=0, keepdims=True))[0]))
    chosen = [first]
    nearest = 1.0 - vectors @ vectors[first]
    for _ in range(count - 1):
        nearest[chosen] = -np.inf
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[chosen[-1]])
    return np.array(chosen, dtype=np.int64)


def typicality(features: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS, seed: int = 0,
               block: int = 2048) -> np.ndarray:
    """Mean cosine similarity of each product to its ``neighbours`` most similar products."""
    vectors = _normalise(features)
    n = len(vectors)
    if n < 2:
        return np.ones(n, dtype=np.float32)
    reference = vectors
    if n > _TYPICALITY_SAMPLE:
        reference = vectors[np.random.default_rng(seed).choice(n, _TYPICALITY_SAMPLE, replace=False)]
    k = int(min(neighbours, len(reference) - 1))
    result = np.empty(n, dtype=np.float32)
    for start in range(0, n, block):
        scores = vectors[start:start + block] @ reference.T
        # The k+1 largest include the product itself (when it is in the reference set): drop the top one.
        top = -np.partition(-scores, k, axis=1)[:, :k + 1]
        result[start:start + block] = (top.sum(axis=1) - top.max(axis=1)) / k
    return np.clip(result, 1e-3, None)


def hybrid_order(features: np.ndarray, probabilities: np.ndarray | None, count: int,
                 labelled_features: np.ndarray | None = None, seed: int = 0,
                 coverage_similarity: float | None = None) -> np.ndarray:
    """``count`` row indices of ``features``, greedily by the hybrid score (see the module docstring).

    ``coverage_similarity=None`` leaves the reach term out.
    """
    vectors = _normalise(features)
    n = len(vectors)
    count = int(min(count, n))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    weight = typicality(vectors, seed=seed).astype(np.float64)
    if probabilities is not None:
        weight *= np.sqrt(np.clip(uncertainty(probabilities, "margin") + 1.0, 0.0, 1.0))
    nearest = np.full(n, -1.0)
    if labelled_features is not None and len(labelled_features):
        labelled = _normalise(labelled_features)
        for start in range(0, n, 2048):
            nearest[start:start + 2048] = (vectors[start:start + 2048] @ labelled.T).max(axis=1)
    close = close_pairs(vectors, coverage_similarity) if coverage_similarity is not None and \
        n <= COVERAGE_UP_TO else None
    uncovered = (nearest < coverage_similarity).astype(np.float32) if close is not None else None
    chosen: list[int] = []
    for _ in range(count):
        score = weight * (1.0 - nearest)
        if close is not None:
            score = score * np.sqrt(1.0 + close @ uncovered)
        score[chosen] = -np.inf
        pick = int(np.argmax(score))
        chosen.append(pick)
        nearest = np.maximum(nearest, vectors @ vectors[pick])
        if close is not None:
            uncovered[close[pick].indices] = 0.0
            uncovered[pick] = 0.0
    return np.array(chosen, dtype=np.int64)


def select_batch(probabilities: np.ndarray | None, features: np.ndarray, batch_size: int,
                 strategy: str = DEFAULT_STRATEGY, similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                 seed: int = 0, labelled_features: np.ndarray | None = None,
                 coverage_similarity: float | None = None) -> np.ndarray:
    """Row indices (into ``features``, the unlabelled pool) of the next ``batch_size`` products to label.

    ``labelled_features`` are the embeddings of products already labelled (the
    hybrid strategy avoids what they cover). Without probabilities (no model
    yet) margin and entropy fall back to :func:`coverage_order`. ``random``
    ignores the diversity guard: it is the baseline the others are measured against.
    """
    n = len(features)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "random":
        return np.random.default_rng(seed).permutation(n)[:batch_size]
    if strategy == "hybrid":
        return hybrid_order(features, probabilities, batch_size, labelled_features, seed, coverage_similarity)
    if probabilities is None:
        return coverage_order(features, batch_size, seed)
    scores = uncertainty(probabilities, strategy, seed)
    ranking = np.argsort(-scores, kind="stable")
    return diverse_order(ranking, features, batch_size, similarity_threshold, limit=batch_size)[:batch_size]
