import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from core.curation import suspicious
from core.features.embeddings import embed_catalog
from core.storage import ingest
from core.storage.catalog import Catalog


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, demo_dir, embedder):
    """The demo catalogue, every photo labelled by its folder, embedded."""
    catalog = Catalog(tmp_path_factory.mktemp("suspicious"))
    ingest.import_paths(catalog, [demo_dir])
    for product in catalog.products():  # the demo leaves one photo per category unlabelled
        if catalog.current_label(product.id) is None:
            catalog.set_labels([(product.id, product.source.split("/")[-2])], source="import")
    embed_catalog(catalog, embedder)
    return catalog


def test_out_of_sample_probabilities_never_see_the_product(labelled, embedder):
    labels = labelled.current_labels()
    ids, features = labelled.embeddings(embedder.key, list(labels))
    truth = np.array([labels[int(pid)] for pid in ids], dtype=object)
    # A product that is its own class cannot be predicted out of sample: proof it was held out.
    lonely = truth.copy()
    lonely[0] = "Only-Me"
    probabilities, classes = suspicious.out_of_sample_probabilities(features, lonely, folds=4)
    assert probabilities.shape == (len(ids), len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert probabilities[0, list(classes).index("Only-Me")] < 1e-3
    assert np.mean(classes[probabilities.argmax(axis=1)] == truth) > 0.8
    with pytest.raises(ValueError):
        suspicious.out_of_sample_probabilities(features, ["A"] * len(ids))


def test_injected_label_errors_are_found_with_the_right_suggestion(labelled, embedder):
    banana = next(p for p in labelled.products() if labelled.current_label(p.id) == "Banana")
    pineapple = next(p for p in labelled.products() if labelled.current_label(p.id) == "Pineapple")
    labelled.set_labels([(banana.id, "Lemon"), (pineapple.id, "Granny-Smith")], source="human", author="tired")
    issues, statistics = suspicious.suspicious_labels(labelled, embedder.key)
    flagged = dict(zip(issues["product_id"], issues["suggested_label"]))
    assert flagged.get(banana.id) == "Banana"
    assert flagged.get(pineapple.id) == "Pineapple"
    assert len(issues) <= 8, "a clean catalogue is not flagged wholesale"
    assert issues["label_quality"].is_monotonic_increasing, "most suspicious first"
    assert statistics["labelled"] == 80

    # "Label is right" is remembered for that label only.
    assert suspicious.mark_label_right(labelled, [banana.id], author="ana") == 1
    issues, _ = suspicious.suspicious_labels(labelled, embedder.key)
    assert banana.id not in set(issues["product_id"]) and pineapple.id in set(issues["product_id"])
    labelled.set_labels([(banana.id, "Orange")])
    issues, _ = suspicious.suspicious_labels(labelled, embedder.key)
    assert banana.id in set(issues["product_id"]), "a new label is judged again"

    result = subprocess.run([sys.executable, "-m", "core", "--workspace", str(labelled.workspace),
                             "suspicious", "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    by_id = {row["product_id"]: row for row in rows}
    assert by_id[pineapple.id]["label"] == "Granny-Smith" and by_id[pineapple.id]["suggested_label"] == "Pineapple"
    assert 0.0 <= by_id[pineapple.id]["score"] < 0.5


def test_using_suggestions_is_one_undoable_action(labelled, embedder):
    from core.curation import review

    products = labelled.products()[:2]
    original = {p.id: labelled.current_label(p.id) for p in products}
    labelled.set_labels([(products[0].id, "Orange"), (products[1].id, "Lemon")], author="tired")
    issues, _ = suspicious.suspicious_labels(labelled, embedder.key)
    mine = issues[issues["product_id"].isin([p.id for p in products])]
    assert len(mine) >= 1
    changed, conflicts = suspicious.use_suggestions(labelled, mine, author="ana")
    assert changed == len(mine) and conflicts == []
    assert review.undo_last_action(labelled, author="ana") == (len(mine), [])
    stale = mine.assign(label="Kiwi")  # the label changed since the check: not overwritten
    changed, conflicts = suspicious.use_suggestions(labelled, stale, author="ana")
    assert changed == 0 and len(conflicts) == len(mine)
    labelled.set_labels(original.items())


def test_a_mislabelled_series_of_shots_cannot_hide_behind_its_twins(labelled, embedder):
    """A supplier labels five near-identical shots of a banana "Lemon": with ordinary folds the twins in
    the training folds vouch for the wrong label; near-duplicates held out together expose it."""
    # The photos' folders, not the current labels: other tests of this module change some labels.
    folders = {product.id: product.source.split("/")[-2] for product in labelled.products()}
    ids, features = labelled.embeddings(embedder.key, list(folders))
    truth = np.array([folders[int(pid)] for pid in ids], dtype=object)
    banana = int(np.flatnonzero(truth == "Banana")[0])
    rng = np.random.default_rng(0)
    twins = features[banana] + 0.002 * rng.normal(size=(5, features.shape[1])).astype(np.float32)
    features = np.concatenate([features, twins])
    noisy = np.concatenate([truth, ["Lemon"] * 5]).astype(object)
    series = set(range(len(truth), len(truth) + 5))

    def flagged(groups):
        probabilities, classes = suspicious.out_of_sample_probabilities(features, noisy, groups=groups)
        return set(suspicious.find_label_issues(noisy, probabilities, classes)["index"].tolist())

    groups = suspicious.near_duplicate_group_ids(features)
    assert len(set(groups[list(series)])) == 1
    assert series <= flagged(groups)
    assert len(series & flagged(None)) < len(series), "ordinary folds let the twins vouch for each other"


def test_group_aware_folds_keep_groups_whole_and_split_only_a_one_series_category():
    targets = np.array([0] * 6 + [1] * 6 + [2] * 4)
    groups = np.array([10, 10, 10, 11, 12, 13, 20, 20, 21, 22, 23, 24, 30, 30, 30, 30])
    assignment = suspicious._fold_assignment(targets, 3, seed=0, groups=groups)
    for group in (10, 20):
        assert len(set(assignment[groups == group])) == 1
    assert len(set(assignment[targets == 0])) >= 2 and len(set(assignment[targets == 1])) >= 2
    # Category 2 is a single series: kept whole it could never be judged, so it is spread out.
    assert len(set(assignment[targets == 2])) >= 2
