import json
import shutil

import numpy as np
import pytest

from core.curation import review
from core.features.embeddings import embed_catalog
from core.model import predict_catalog, train_version
from core.model.head import NotFittedError
from core.model.novelty import NoveltyDetector
from core.model.training import novelty_path
from core.storage import ingest
from core.storage.catalog import Catalog


def series(centre, products, shots, rng, spread=0.6, jitter=0.05):
    """``products`` photographed ``shots`` times each, around a category ``centre``."""
    looks = centre + spread * rng.normal(size=(products, len(centre)))
    return np.repeat(looks, shots, axis=0) + jitter * rng.normal(size=(products * shots, len(centre)))


def test_a_product_unlike_every_labelled_one_is_new_and_a_new_shot_of_a_known_one_is_not(tmp_path):
    rng = np.random.default_rng(0)
    known = [rng.normal(size=48) for _ in range(3)]
    labelled = np.concatenate([series(centre, 10, 4, rng) for centre in known])
    labels = np.repeat(["a", "b", "c"], 40)
    detector = NoveltyDetector(components=16).fit(labelled, labels)
    new_shots_of_known = np.concatenate([series(centre, 10, 1, rng) for centre in known])
    unknown = series(rng.normal(size=48), 10, 1, rng)
    assert detector.is_new(unknown).mean() >= 0.9
    assert detector.is_new(new_shots_of_known).mean() <= 0.2
    assert detector.score(unknown).max() < detector.score(new_shots_of_known).min()

    # The learned state is kept whole: a loaded detector scores and flags exactly as the fitted one.
    loaded = NoveltyDetector.load(detector.save(tmp_path / "detector.npz"))
    np.testing.assert_allclose(loaded.score(unknown), detector.score(unknown), rtol=1e-6)
    assert loaded.threshold_ == detector.threshold_
    with pytest.raises(ValueError, match="not a novelty detector"):
        NoveltyDetector.load(_npz(tmp_path, labelled))
    with pytest.raises(NotFittedError):
        NoveltyDetector().score(unknown)
    with pytest.raises(ValueError, match="quantile"):
        NoveltyDetector(quantile=0.7)
    with pytest.raises(ValueError, match="one label per row"):
        NoveltyDetector().fit(labelled, labels[:-1])


def _npz(folder, array):
    path = folder / "unrelated.npz"
    np.savez(path, vectors=array)
    return path


def test_a_refit_on_the_same_vectors_reuses_the_label_free_part_and_learns_the_same(monkeypatch):
    """A retrain after corrections fits on the same vectors: the principal axes and series are remembered,
    and what the detector learns is exactly what a fit from scratch learns."""
    from core.model import novelty

    rng = np.random.default_rng(4)
    features = np.concatenate([series(rng.normal(size=32), 8, 3, rng) for _ in range(4)]).astype(np.float32)
    labels = np.repeat(["a", "b", "c", "d"], 24)
    corrected = labels.copy()
    corrected[:5] = "b"
    NoveltyDetector(components=8).fit(features, labels)
    axes = []
    real = novelty._principal_axes
    monkeypatch.setattr(novelty, "_principal_axes", lambda *args: axes.append(1) or real(*args))
    remembered = NoveltyDetector(components=8).fit(features, corrected)
    assert not axes, "no principal axes computed again"
    novelty._LABEL_FREE.clear()
    fresh = NoveltyDetector(components=8).fit(features, corrected)
    assert axes, "computed after the memo was cleared"
    for name in ("mean_", "scale_", "components_", "whitening_", "centres_", "reference_"):
        np.testing.assert_array_equal(getattr(remembered, name), getattr(fresh, name), err_msg=name)
    assert remembered.threshold_ == fresh.threshold_


def test_distance_weighs_the_directions_categories_differ_in_not_those_shots_vary_in():
    """Shots of a category vary a lot along one axis (light, angle); categories differ along others. A new shot
    far along the first is known; a product halfway between two categories, nearer to either in plain distance,
    is new: distance counts in units of how shots of a category vary."""
    rng = np.random.default_rng(1)
    dim, shots = 8, 60
    base = np.zeros(dim)
    base[0] = 10.0
    categories = []
    for index in range(4):
        centre = base.copy()
        centre[2 + index] = 3.0  # categories differ along their own axes
        rows = centre + 0.2 * rng.normal(size=(shots, dim))
        rows[:, 1] += rng.normal(scale=3.0, size=shots)  # every category's shots vary along axis 1
        categories.append(rows)
    labelled = np.concatenate(categories)
    labels = np.repeat(list("abcd"), shots)
    detector = NoveltyDetector(components=8).fit(labelled, labels)
    new_shot = base.copy()
    new_shot[2], new_shot[1] = 3.0, 7.0  # category a, lit from the side
    stranger = base.copy()
    stranger[2], stranger[3] = 1.5, 1.5  # halfway between categories a and b
    assert np.linalg.norm(stranger - categories[0].mean(axis=0)) < np.linalg.norm(new_shot - categories[0].mean(axis=0))
    scores = detector.score(np.stack([new_shot, stranger]))
    assert scores[0] > scores[1]
    assert detector.is_new(stranger[None])[0] and not detector.is_new(new_shot[None])[0]


def _three_categories(rng):
    known = [rng.normal(size=48) for _ in range(3)]
    labelled = np.concatenate([series(centre, 10, 4, rng) for centre in known])
    return known, labelled, np.repeat(["a", "b", "c"], 40)


def test_the_head_s_doubt_flags_a_product_that_looks_near_a_known_category():
    """A sibling variety sits near its known cousins, so distance alone calls it known; the head is unsure of it
    where held-out labelled products were sure. A product far beyond every category stays flagged however sure
    the head is (standard scores, not ranks that stop at the last labelled product)."""
    rng = np.random.default_rng(2)
    known, labelled, labels = _three_categories(rng)
    held_out_confidence = np.where(rng.random(len(labels)) < 0.3, rng.uniform(0.85, 0.99, len(labels)), np.nan)
    with_confidence = NoveltyDetector(components=16).fit(labelled, labels, held_out_confidence)
    distance_only = NoveltyDetector(components=16).fit(labelled, labels)
    assert with_confidence.needs_confidence and not distance_only.needs_confidence
    looks_known = series(known[0], 6, 1, rng)
    far = series(rng.normal(size=48) * 3, 6, 1, rng)
    assert not distance_only.is_new(looks_known).any()
    assert not with_confidence.is_new(looks_known, np.full(6, 0.95)).any(), "sure and near: known"
    assert with_confidence.is_new(looks_known, np.full(6, 0.3)).all(), "near but the head is unsure: new?"
    assert with_confidence.is_new(far, np.full(6, 0.999)).all(), "far beyond every category, even if sure"
    with pytest.raises(ValueError, match="confidence"):
        with_confidence.score(looks_known)
    with pytest.raises(ValueError, match="one confidence per product"):
        with_confidence.score(looks_known, np.full(5, 0.9))


def test_a_detector_saved_before_the_confidence_still_flags_by_distance(tmp_path):
    rng = np.random.default_rng(3)
    known, labelled, labels = _three_categories(rng)
    fitted = NoveltyDetector(components=16).fit(labelled, labels)
    # What stops 23-25 wrote: the distance's state, its threshold on the negated squared distance.
    older = tmp_path / "older.novelty.npz"
    threshold = float(np.quantile(fitted.distance(labelled), 0.01))
    np.savez(older, **{name: getattr(fitted, name) for name in ("mean_", "scale_", "components_", "whitening_",
                                                                "centres_")}, threshold_=threshold)
    loaded = NoveltyDetector.load(older)
    assert not loaded.needs_confidence
    unknown = series(rng.normal(size=48), 5, 1, rng)
    np.testing.assert_allclose(loaded.score(unknown), fitted.distance(unknown), rtol=1e-6)
    assert loaded.is_new(unknown).all() and not loaded.is_new(series(known[1], 5, 1, rng)).any()


def test_only_apples_labelled_milk_is_flagged_and_bulk_accept_skips_it(tmp_path, embedder, demo_dir):
    """The issue's case: with only some fruit labelled, a milk carton must not be filed as fruit at 90%."""
    photos = tmp_path / "photos"
    for category in ("Granny-Smith", "Lemon", "Orange", "Banana"):
        shots = sorted((demo_dir / category).glob("*.jpg"))
        (photos / "labelled" / category).mkdir(parents=True)
        for shot in shots[:6]:
            shutil.copy(shot, photos / "labelled" / category)
        (photos / "unlabelled").mkdir(exist_ok=True)
        for shot in shots[6:]:  # more shots of known categories, unlabelled
            shutil.copy(shot, photos / "unlabelled" / f"{category}-{shot.name}")
    (photos / "milk").mkdir()
    for category in ("Arla-Standard-Milk", "Oatly-Oat-Milk"):
        for shot in sorted((demo_dir / category).glob("*.jpg")):
            shutil.copy(shot, photos / "milk" / f"{category}-{shot.name}")
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [photos / "labelled"])
    milk = ingest.import_paths(catalog, [photos / "milk"], apply_labels=False).product_ids
    known = ingest.import_paths(catalog, [photos / "unlabelled"], apply_labels=False).product_ids
    embed_catalog(catalog, embedder)
    version = train_version(catalog, embedder)
    assert np.isfinite(version.metrics["novelty_threshold"])
    assert NoveltyDetector.load(novelty_path(catalog.model_path(version))).needs_confidence, \
        "the detector learned the head's held-out confidences"
    assert novelty_path(catalog.model_path(version)).is_file(), "the detector is kept beside the head"
    predict_catalog(catalog, version)
    predictions = catalog.predictions(version.id)
    flagged = [predictions[pid]["new_category"] for pid in milk]
    assert np.mean(flagged) >= 0.8, flagged
    assert np.mean([predictions[pid]["new_category"] for pid in known]) <= 0.25, "new shots of known fruit"
    labelled = catalog.current_labels()
    assert not any(predictions[pid]["new_category"] for pid in labelled), "labelled products are known"

    shown = review.select(review.review_table(catalog), new_category_only=True)
    assert sorted(shown["product_id"]) == sorted(pid for pid, p in predictions.items() if p["new_category"])

    accepted = review.accept_predictions(catalog, 0.0, "ana")
    now = catalog.current_labels()
    assert accepted == sum(not f for f in flagged) + sum(not predictions[pid]["new_category"] for pid in known)
    assert all((pid in now) != predictions[pid]["new_category"] for pid in milk)


def _flags_from(catalog, version, key, product_ids):
    """What the version's detector says of ``product_ids`` judging their ``key`` vectors."""
    from core.model.training import load_version

    _, head = load_version(catalog, version)
    ids, predicted = catalog.embeddings(version.prediction_key, product_ids)
    _, judged = catalog.embeddings(key, ids.tolist())
    detector = NoveltyDetector.load(novelty_path(catalog.model_path(version)))
    return dict(zip(ids.tolist(), detector.is_new(judged, head.top_k(predicted, 1)[1][:, 0]).tolist()))


def test_the_detector_judges_the_vector_the_prediction_is_made_from(tmp_path, embedder, demo_dir):
    """Each product's photo averaged with its crop views, as the head sees it; a version trained before
    stop 30 (no ``novelty_vectors``) goes on judging the photo's own vector, the one it learned from."""
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir], apply_labels=False)
    others = catalog.product_ids()
    for category in ("Banana", "Lemon", "Granny-Smith", "Arla-Standard-Milk"):
        chosen = [product.id for product in catalog.products() if category in (product.source or "")][:4]
        catalog.set_labels((pid, category) for pid in chosen)
        others = [pid for pid in others if pid not in chosen]
    embed_catalog(catalog, embedder)
    assert embedder.prediction_key != embedder.key, "the suite's embedder makes crop views"
    version = train_version(catalog, embedder)
    assert version.params["novelty_vectors"] == "prediction"
    learned_from = catalog.embeddings(version.prediction_key, sorted(catalog.current_labels()))[1]
    np.testing.assert_allclose(NoveltyDetector.load(novelty_path(catalog.model_path(version))).mean_,
                               learned_from.mean(axis=0), rtol=1e-4, atol=1e-5)
    predict_catalog(catalog, version)
    stored = {pid: p["new_category"] for pid, p in catalog.predictions(version.id, others).items()}
    assert stored == _flags_from(catalog, version, version.prediction_key, others)
    assert stored != _flags_from(catalog, version, version.embedding_key, others), "the two judge differently"
    assert any(stored.values()) and not all(stored.values())

    with catalog.transaction() as connection:  # as stops 23-29 recorded a version
        params = {k: v for k, v in version.params.items() if k != "novelty_vectors"}
        connection.exec_driver_sql("UPDATE model_versions SET params = ? WHERE id = ?",
                                   (json.dumps(params), version.id))
    older = catalog.model_version(version.id)
    predict_catalog(catalog, older)
    stored = {pid: p["new_category"] for pid, p in catalog.predictions(older.id, others).items()}
    assert stored == _flags_from(catalog, older, older.embedding_key, others)
