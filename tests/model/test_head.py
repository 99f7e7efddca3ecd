import numpy as np
import pytest

from core.model.head import HeadClassifier, NotFittedError
from core.model.metrics import expected_calibration_error


def blobs(n_per_class=40, n_classes=4, dim=16, seed=0, spread=1.0, sample_seed=None):
    """Gaussian blobs around centres drawn from ``seed``; the samples from ``sample_seed`` (default: seed).

    The same ``seed`` with another ``sample_seed`` gives new photos of the same categories.
    """
    centres = np.random.default_rng(seed).normal(scale=4.0, size=(n_classes, dim))
    rng = np.random.default_rng([seed, seed if sample_seed is None else sample_seed, 1])
    features = np.concatenate([centres[c] + rng.normal(scale=spread, size=(n_per_class, dim))
                               for c in range(n_classes)]).astype(np.float32)
    labels = np.repeat([f"class-{c}" for c in range(n_classes)], n_per_class)
    return features, labels


@pytest.mark.parametrize("hidden_units, solver", [(0, "auto"), (0, "adamw"), (32, "auto")])
def test_learns_separable_categories(hidden_units, solver):
    features, labels = blobs()
    test_features, test_labels = blobs(seed=0, sample_seed=1, n_per_class=10)
    assert not (test_features[:, None] == features[None]).all(axis=2).any(), "test rows are new rows"
    head = HeadClassifier(hidden_units=hidden_units, max_epochs=60, solver=solver).fit(features, labels)
    assert list(head.classes_) == ["class-0", "class-1", "class-2", "class-3"]
    assert np.mean(head.predict(test_features) == test_labels) > 0.95
    probabilities = head.predict_proba(test_features)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert head.metrics_["accuracy"] > 0.9
    calibration = head.metrics_["calibration"]  # the hold-out products' reliability diagram
    assert sum(b["n"] for b in calibration["bins"]) == head.metrics_["n"] and 0 <= calibration["ece"] < 0.2
    assert set(head.metrics_["per_class"]) == set(head.classes_)
    assert np.array(head.metrics_["confusion_matrix"]).shape == (4, 4)


def test_top_k_is_sorted_and_consistent():
    features, labels = blobs()
    head = HeadClassifier().fit(features, labels)
    top_labels, top_probabilities = head.top_k(features[:5], k=3)
    assert all(len(row) == 3 for row in top_labels)
    assert (np.diff(top_probabilities, axis=1) <= 0).all()
    assert [row[0] for row in top_labels] == list(head.predict(features[:5]))


def test_early_stopping_uses_the_validation_split():
    features, labels = blobs(spread=6.0)
    head = HeadClassifier(max_epochs=400, patience=5, refit_full=False, solver="adamw", learning_rate=0.05,
                          hidden_units=64).fit(features, labels)
    assert head.best_epoch_ < 400
    assert len(head.history_["val_loss"]) < 400


def test_class_weighting_helps_a_rare_category():
    rng = np.random.default_rng(1)
    common = rng.normal(0.0, 1.0, size=(300, 2))
    rare = rng.normal(1.5, 1.0, size=(15, 2))
    features = np.concatenate([common, rare]).astype(np.float32)
    labels = np.array(["common"] * 300 + ["rare"] * 15)
    balanced = HeadClassifier(class_weight="balanced").fit(features, labels)
    plain = HeadClassifier(class_weight=None).fit(features, labels)
    probe = rng.normal(1.5, 1.0, size=(200, 2)).astype(np.float32)
    assert np.mean(balanced.predict(probe) == "rare") > np.mean(plain.predict(probe) == "rare")


def test_errors_are_helpful():
    features, labels = blobs()
    with pytest.raises(NotFittedError, match="fit"):
        HeadClassifier().predict(features)
    with pytest.raises(ValueError, match="at least 2 categories"):
        HeadClassifier().fit(features, ["only"] * len(features))
    with pytest.raises(ValueError, match="one label per row"):
        HeadClassifier().fit(features, labels[:-1])
    broken = features.copy()
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        HeadClassifier().fit(broken, labels)


def test_save_and_load_round_trip(tmp_path):
    features, labels = blobs()
    head = HeadClassifier().fit(features, labels)
    path = head.save(tmp_path / "head.keras")
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    loaded = HeadClassifier.load(path, head.classes_)
    np.testing.assert_allclose(loaded.predict_proba(features), head.predict_proba(features), atol=1e-6)
    with pytest.raises(ValueError, match="outputs"):
        HeadClassifier.load(path, ["a", "b"])


def test_a_single_example_category_still_trains():
    features, labels = blobs(n_per_class=20)
    features = np.concatenate([features, features[:1] + 10])
    labels = np.concatenate([labels, ["singleton"]])
    head = HeadClassifier().fit(features, labels)
    assert "singleton" in head.classes_


def test_closed_form_head_is_calibrated_and_matches_gradient_training():
    features, labels = blobs(spread=8.0, n_per_class=150)
    test_features, test_labels = blobs(spread=8.0, n_per_class=500, sample_seed=7)  # new draws
    closed = HeadClassifier().fit(features, labels)
    assert closed.resolved_solver == "closed_form" and closed.temperature_ > 0
    iterative = HeadClassifier(solver="adamw", max_epochs=100).fit(features, labels)
    closed_accuracy = np.mean(closed.predict(test_features) == test_labels)
    assert closed_accuracy >= np.mean(iterative.predict(test_features) == test_labels) - 0.05
    # Calibrated by the fitted temperature: "80% sure" is right about 80% of the time...
    probabilities = closed.predict_proba(test_features)
    correct = closed.classes_[probabilities.argmax(axis=1)] == test_labels
    assert expected_calibration_error(probabilities.max(axis=1), correct) < 0.05
    # ...which the unscaled ridge scores are not.
    logits = np.log(probabilities) / closed.temperature_
    unscaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    unscaled /= unscaled.sum(axis=1, keepdims=True)
    assert expected_calibration_error(unscaled.max(axis=1), correct) > 0.2
    with pytest.raises(ValueError, match="linear head only"):
        HeadClassifier(hidden_units=8, solver="closed_form")
    with pytest.raises(ValueError, match="solver"):
        HeadClassifier(solver="sgd")


def _direct_ridge(rows, targets, num_classes, row_weights, l2):
    """The textbook weighted ridge onto one-hot targets, solved in float64: the reference."""
    total = row_weights.sum()
    one_hot = np.eye(num_classes)[targets]
    feature_mean, target_mean = row_weights @ rows / total, row_weights @ one_hot / total
    centred = rows - feature_mean
    gram = (centred * row_weights[:, None]).T @ centred + l2 * total * np.eye(rows.shape[1])
    weights = np.linalg.solve(gram, (centred * row_weights[:, None]).T @ (one_hot - target_mean))
    return weights, target_mean - feature_mean @ weights


def test_fits_sharing_one_gram_matrix_equal_separate_fits():
    """A hold-out fit computed by subtracting its rows' share equals a fit on the remaining rows."""
    from core.model._ridge import balanced_class_weights, fit_standardised_ridge_many

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 16)).astype(np.float32)
    targets = rng.integers(0, 4, 120)
    views = [features + rng.normal(0, 0.1, features.shape).astype(np.float32)]
    held = np.arange(0, 120, 4)
    mean, variance, (everything, without) = fit_standardised_ridge_many(
        features, targets, 4, 0.1, [np.zeros(0, np.int64), held], views)
    np.testing.assert_allclose(mean, features.mean(axis=0), atol=1e-6)
    for fit, keep in ((everything, np.arange(120)), (without, np.setdiff1d(np.arange(120), held))):
        rows = np.concatenate([features[keep], views[0][keep]]).astype(np.float64)
        row_targets = np.tile(targets[keep], 2)
        row_weights = balanced_class_weights(np.tile(targets, 2), 4)[row_targets].astype(np.float64)
        expected = _direct_ridge((rows - mean) / np.sqrt(variance), row_targets, 4, row_weights, 0.1)
        np.testing.assert_allclose(fit[0], expected[0], atol=1e-4)
        np.testing.assert_allclose(fit[1], expected[1], atol=1e-4)
    with pytest.raises(ValueError, match="overlap"):
        fit_standardised_ridge_many(features, targets, 4, 0.1, [held, held])


class ArrayViewScatter:
    """The view-scatter interface of :class:`core.model.view_scatter.ViewScatter`, on in-memory rows."""

    def __init__(self, rows):
        self.views = rows.shape[1] - 1
        deviations = rows - rows.mean(axis=1, keepdims=True)
        self.per_product = np.einsum("nvi,nvj->nij", deviations, deviations)

    def weighted(self, weights, indices=None):
        indices = np.arange(len(weights)) if indices is None else indices
        return np.einsum("n,nij->ij", weights[indices], self.per_product[indices]).astype(np.float32)


def test_views_summarised_by_mean_and_scatter_give_the_fit_on_every_row():
    """One row per product (its mean) plus the views' weighted scatter = the fit on all 1 + V rows."""
    from core.model._ridge import fit_standardised_ridge_many, product_weights

    rng = np.random.default_rng(1)
    features = rng.normal(size=(90, 12)).astype(np.float32)
    targets = rng.integers(0, 3, 90)
    views = [features + rng.normal(0, 0.3, features.shape).astype(np.float32) for _ in range(3)]
    rows = np.stack([features] + views, axis=1)
    means, scatter = rows.mean(axis=1), ArrayViewScatter(rows)
    weights = product_weights(targets, 3)
    held = np.arange(0, 90, 5)
    expected = fit_standardised_ridge_many(features, targets, 3, 0.1, [held, np.zeros(0, np.int64)], views)
    summarised = fit_standardised_ridge_many(
        features, targets, 3, 0.1, [held, np.zeros(0, np.int64)], view_means=means,
        view_scatter=([scatter.weighted(weights), scatter.weighted(weights, held), None], 3))
    np.testing.assert_allclose(summarised[0], expected[0])
    for (weights_rows, bias_rows), (weights_mean, bias_mean) in zip(expected[2], summarised[2]):
        assert np.abs(weights_rows).max() > 0.05  # a real fit, not all zeros
        np.testing.assert_allclose(weights_mean, weights_rows, atol=2e-4)
        np.testing.assert_allclose(bias_mean, bias_rows, atol=2e-4)
    # Without the scatter the fit is a different one: the views' spread is what it adds.
    zero = np.zeros((12, 12), np.float32)
    without = fit_standardised_ridge_many(features, targets, 3, 0.1, [np.zeros(0, np.int64)], view_means=means,
                                          view_scatter=([zero, None], 3))
    assert np.abs(without[2][0][0] - expected[2][1][0]).max() > 10 * 2e-4
    labels = np.array(["a", "b", "c"], dtype=object)[targets]
    head = HeadClassifier().fit(features, labels, view_means=means, view_scatter=scatter)
    rows_head = HeadClassifier().fit(features, labels, augmented_views=views)
    assert (head.predict(means) == rows_head.predict(means)).all()
    with pytest.raises(ValueError, match="together"):
        HeadClassifier().fit(features, labels, view_scatter=scatter)
    with pytest.raises(ValueError, match="closed-form"):
        HeadClassifier(solver="adamw").fit(features, labels, view_means=means, view_scatter=scatter)


def test_a_correction_moves_only_its_categories_validation_share():
    """Retraining after a correction keeps every other category's hold-out products (and so
    the cached view scatter of the hold-out set stays valid for them)."""
    labels = np.array([f"c{index % 6}" for index in range(120)], dtype=object)
    head = HeadClassifier()
    _, before = head._split(labels)
    corrected = labels.copy()
    corrected[0] = "c1"
    _, after = head._split(corrected)
    changed = set(before.tolist()) ^ set(after.tolist())
    assert changed and {corrected[index] for index in changed} | {labels[index] for index in changed} <= {"c0", "c1"}


def test_propagated_rows_only_train_and_never_leak_a_validation_answer():
    """Rows copied from a labelled product (propagated_from >= 0) are never validated on, and a copy
    of a validation product leaves the hold-out fit: the validation metrics stay exactly as without it."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 24))
    labels = np.repeat(np.array(list("abcd"), dtype=object), 15)
    features = (centres[np.repeat(np.arange(4), 15)] + 3.0 * rng.normal(size=(60, 24))).astype(np.float32)
    plain = HeadClassifier(random_state=0).fit(features, labels)
    _, validation = plain._split(labels)
    assert 0 < plain.metrics_["accuracy"] < 1.0, "the test needs validation mistakes a leak would fix"

    copies = np.concatenate([validation, validation])  # exact copies of every validation product, twice
    rows = np.concatenate([features, features[copies]])
    propagated_from = np.concatenate([np.full(60, -1), copies])
    leaked = HeadClassifier(random_state=0).fit(rows, np.concatenate([labels, labels[copies]]),
                                                propagated_from=propagated_from)
    assert leaked.metrics_["n"] == plain.metrics_["n"]
    assert leaked.metrics_["confusion_matrix"] == plain.metrics_["confusion_matrix"]

    train, validation_rows, excluded = leaked._split_with_propagated(
        np.concatenate([labels, labels[copies]]), propagated_from)
    assert set(validation_rows) == set(validation) and not set(validation_rows) & set(range(60, len(rows)))
    assert set(range(60, len(rows))) <= set(excluded) and not set(train) & set(excluded)
    with pytest.raises(ValueError):
        HeadClassifier().fit(features, labels, propagated_from=np.full(3, -1))


def test_near_identical_shots_are_held_out_together():
    """A catalogue of photo series (several shots of each product): no validation product may have a
    near-identical twin in training, or accuracy and temperature are measured on twins."""
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=1.0, size=(3, 32))
    products = centres[np.repeat(np.arange(3), 8)] + 0.8 * rng.normal(size=(24, 32))  # 8 products per category
    shots = np.repeat(products, 5, axis=0) + 0.05 * rng.normal(size=(120, 32))  # 5 shots of each
    labels = np.repeat(np.array(["a", "b", "c"], dtype=object), 40)
    vectors = shots / np.linalg.norm(shots, axis=1, keepdims=True)

    def twins_across(head):
        held = head.validation_rows_
        kept = np.setdiff1d(np.arange(len(shots)), held)
        return int(((vectors[held] @ vectors[kept].T) >= 0.92).any(axis=1).sum())

    grouped = HeadClassifier().fit(shots.astype(np.float32), labels)
    assert len(grouped.validation_rows_) >= 3 and twins_across(grouped) == 0
    assert {labels[row] for row in grouped.validation_rows_} == {"a", "b", "c"}
    ungrouped = HeadClassifier(group_threshold=None).fit(shots.astype(np.float32), labels)
    assert twins_across(ungrouped) > 0, "without groups the split does put twins on both sides"
    with pytest.raises(ValueError, match="group_threshold"):
        HeadClassifier(group_threshold=1.5)


def test_a_small_perfect_hold_out_does_not_make_every_confidence_100_percent():
    """Eight held-out products all right: evidence of about 90% accuracy (Laplace), not of certainty."""
    features, labels = blobs(n_per_class=10, spread=0.3)
    head = HeadClassifier(group_threshold=None).fit(features, labels)
    n, calibration = head.metrics_["n"], head.metrics_["calibration"]
    assert head.metrics_["accuracy"] == 1.0 and n == 8
    mean_confidence = sum(b["n"] * b["confidence"] for b in calibration["bins"]) / n
    assert mean_confidence <= (n + 1) / (n + 2) + 1e-6 and head.temperature_ < 199
    assert head.predict_proba(blobs(n_per_class=5, spread=0.3, sample_seed=4)[0]).max(axis=1).min() < 0.999


def test_a_streamed_fit_equals_the_fit_on_every_row_held_in_memory():
    features, labels = blobs(n_per_class=90, n_classes=5, dim=24, spread=6.0)
    features += 50.0  # far from the origin, as non-negative CNN features are: the sums must keep their digits
    order = np.random.default_rng(2).permutation(len(labels))
    features, labels = features[order], labels[order]
    in_memory = HeadClassifier(group_threshold=None).fit(features, labels)
    ids = np.arange(5000, 5000 + len(labels))
    requests = []

    def read(chunk_ids):
        requests.append(len(chunk_ids))
        return features[chunk_ids - 5000]

    streamed = HeadClassifier(group_threshold=None).fit_streamed(read, ids, labels, chunk=37)
    assert max(requests) <= 37, "never more than a chunk at a time"
    assert 0.5 < in_memory.metrics_["accuracy"] < 1.0, "a case where the temperature matters"
    np.testing.assert_array_equal(streamed.validation_rows_, in_memory.validation_rows_)
    assert streamed.temperature_ == pytest.approx(in_memory.temperature_, rel=1e-4)
    np.testing.assert_allclose(streamed.predict_proba(features), in_memory.predict_proba(features), atol=1e-4)
    assert streamed.metrics_["accuracy"] == in_memory.metrics_["accuracy"]
    with pytest.raises(ValueError, match="closed-form"):
        HeadClassifier(hidden_units=8).fit_streamed(read, ids, labels)
    with pytest.raises(ValueError, match="one label per product"):
        HeadClassifier().fit_streamed(read, ids, labels[:-1])
    with pytest.raises(ValueError, match="one finite vector"):
        HeadClassifier().fit_streamed(lambda chunk_ids: features[:3], ids, labels)
