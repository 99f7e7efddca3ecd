import numpy as np
import pytest

from core.curation import active_learning


def test_margin_and_entropy_rank_the_uncertain_first():
    probabilities = np.array([[0.98, 0.01, 0.01], [0.40, 0.35, 0.25], [0.6, 0.39, 0.01]])
    assert np.argmax(active_learning.uncertainty(probabilities, "margin")) == 1
    assert np.argmax(active_learning.uncertainty(probabilities, "entropy")) == 1
    assert np.argmin(active_learning.uncertainty(probabilities, "margin")) == 0
    with pytest.raises(ValueError, match="strategy"):
        active_learning.uncertainty(probabilities, "greedy")


def test_entropy_of_top_k_counts_the_missing_mass():
    # Same top-2, but the second row leaves 0.5 of its mass to unseen classes.
    top_k = np.array([[0.5, 0.5], [0.3, 0.2]])
    scores = active_learning.uncertainty(top_k, "entropy")
    assert scores[1] > scores[0]


def test_select_batch_avoids_near_identical_products():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 8))
    features[10:20] = features[10] + 0.001 * rng.normal(size=(10, 8))  # one clump of ten shots
    probabilities = np.tile([0.9, 0.1], (50, 1))
    probabilities[10:20] = [0.5, 0.5]  # the clump is the most uncertain
    batch = active_learning.select_batch(probabilities, features, 5, strategy="margin")
    assert len(batch) == 5 and len(set(batch.tolist())) == 5
    assert sum(10 <= index < 20 for index in batch) == 1
    random_batch = active_learning.select_batch(probabilities, features, 5, strategy="random")
    assert len(set(random_batch.tolist())) == 5


def test_without_a_model_the_first_batch_covers_feature_space():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 16)) * 10
    features = np.concatenate([centre + rng.normal(size=(25, 16)) for centre in centres])
    for strategy in ("margin", "hybrid"):
        batch = active_learning.select_batch(None, features, 4, strategy=strategy)
        assert sorted(index // 25 for index in batch) == [0, 1, 2, 3], f"{strategy}: one product from each cluster"


def test_hybrid_prefers_uncertain_typical_products_no_label_covers():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 16)) * 10
    features = np.concatenate([centre + rng.normal(size=(30, 16)) for centre in centres])
    probabilities = np.tile([0.95, 0.05], (90, 1))
    probabilities[30:60] = [0.55, 0.45]  # the model is torn about cluster 1
    labelled = features[60:62] + 0.01  # cluster 2 already has labels
    first = active_learning.select_batch(probabilities, features, 1, labelled_features=labelled)[0]
    assert 30 <= first < 60
    batch = active_learning.select_batch(probabilities, features, 3, labelled_features=labelled)
    assert not any(60 <= index for index in batch), "cluster 2 is covered by labels: nothing to ask there"
    assert 30 <= batch[0] < 60 and len(set(batch)) == 3
    outlier = features.mean(axis=0) + 100.0  # far from everything, but atypical
    with_outlier = np.concatenate([features, [outlier]])
    probabilities = np.concatenate([probabilities, [[0.5, 0.5]]])
    assert active_learning.select_batch(probabilities, with_outlier, 1)[0] != 90


def test_hybrid_prefers_a_label_that_reaches_many_near_identical_shots():
    """With the reach term: twenty loosely alike products (cosine 0.5) look more typical than a tight
    series of nine shots (0.9), but one label of the series trains all nine (propagation): it comes first."""
    from core.curation.active_learning import COVERAGE_SIMILARITY, hybrid_order
    from core.model.training import DEFAULT_PROPAGATION_THRESHOLD

    assert COVERAGE_SIMILARITY == DEFAULT_PROPAGATION_THRESHOLD
    basis = np.eye(64)
    loose = np.sqrt(0.5) * basis[0] + np.sqrt(0.5) * basis[2:22]
    series = np.sqrt(0.9) * basis[1] + np.sqrt(0.1) * basis[22:31]
    features = np.concatenate([loose, series]).astype(np.float32)
    in_series = set(range(20, 29))
    assert int(hybrid_order(features, None, 1)[0]) not in in_series, "the default leaves the reach term out"
    first = hybrid_order(features, None, 2, coverage_similarity=COVERAGE_SIMILARITY)
    assert int(first[0]) in in_series
    assert int(first[1]) not in in_series, "once the series is covered, its other shots add nothing"
