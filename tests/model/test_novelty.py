import shutil

import numpy as np
import pytest

from core.curation import review
from core.features.embeddings import embed_catalog
from core.model import predict_catalog, train_version
from core.model.head import NotFittedError
from core.model.novelty import NoveltyDetector
from core.storage import ingest
from core.storage.catalog import Catalog


def series(centre, products, shots, rng, spread=0.6, jitter=0.05):
    """``products`` photographed ``shots`` times each, around a category ``centre``."""
    looks = centre + spread * rng.normal(size=(products, len(centre)))
    return np.repeat(looks, shots, axis=0) + jitter * rng.normal(size=(products * shots, len(centre)))


def test_a_product_unlike_every_labelled_one_is_new_and_a_new_shot_of_a_known_one_is_not():
    rng = np.random.default_rng(0)
    known = [rng.normal(size=48) for _ in range(3)]
    labelled = np.concatenate([series(centre, 10, 4, rng) for centre in known])
    detector = NoveltyDetector().fit(labelled)
    new_shots_of_known = np.concatenate([series(centre, 10, 1, rng) for centre in known])
    unknown = series(rng.normal(size=48), 10, 1, rng)
    assert detector.is_new(unknown).mean() >= 0.9
    assert detector.is_new(new_shots_of_known).mean() <= 0.2
    assert (detector.similarity(labelled) > 0.99).all(), "a labelled product is its own nearest"
    with pytest.raises(NotFittedError):
        NoveltyDetector().similarity(unknown)
    with pytest.raises(ValueError, match="quantile"):
        NoveltyDetector(quantile=0.7)


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
    assert 0 < version.metrics["novelty_threshold"] < 1
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
