"""The cached, class-weighted view scatter: right sums, and kept up to date by category."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from core.features.embeddings import Embedder
from core.model._ridge import product_weights
from core.model.view_scatter import ViewScatter
from core.storage.catalog import Catalog

DIM = 1280  # efficientnet_lite0 with average pooling
VIEWS = 2


@pytest.fixture
def setup(tmp_path):
    """A real catalogue of 40 products in 8 categories with stored photo and view vectors."""
    catalog = Catalog(tmp_path / "workspace")
    embedder = Embedder(backbone="efficientnet_lite0", pooling="avg", views=VIEWS)
    rng = np.random.default_rng(0)
    ids = []
    for index in range(40):
        buffer = io.BytesIO()
        Image.new("RGB", (2, 2), (index, 0, 0)).save(buffer, "PNG")
        ids.append(catalog.add_image(buffer.getvalue(), f"p{index}.png", "PNG", ".png", 2, 2)[0])
    photos = rng.normal(size=(40, DIM)).astype(np.float16)
    views = [(photos + rng.normal(0, 0.2, photos.shape)).astype(np.float16) for _ in range(VIEWS)]
    catalog.store_embeddings(embedder.key, ids, photos)
    for number, vectors in enumerate(views):
        catalog.store_embeddings(embedder.view_key(number), ids, vectors)
    names = ["apple", "milk", "lemon", "juice", "pear", "yoghurt", "oats", "carrot"]
    labels = np.array(names, dtype=object)[np.arange(40) % 8]
    return catalog, embedder, np.array(ids), labels


def brute_force(catalog, embedder, ids, weights):
    total = np.zeros((DIM, DIM))
    keys = [embedder.key] + [embedder.view_key(number) for number in range(embedder.views)]
    for pid, weight in zip(ids, weights):
        found = [catalog.embeddings(key, [int(pid)])[1] for key in keys]
        if any(len(vectors) == 0 for vectors in found):
            continue  # a product without its views contributes nothing
        rows = np.concatenate(found).astype(np.float64)
        deviations = rows - rows.mean(axis=0)
        total += weight * deviations.T @ deviations
    return total


def targets_of(labels):
    names = sorted(set(labels))
    return np.array([names.index(label) for label in labels]), len(names)


def balanced(labels):
    targets, num_classes = targets_of(labels)
    return product_weights(targets, num_classes)


def test_the_weighted_sum_over_products_and_subsets(setup):
    catalog, embedder, ids, labels = setup
    scatter = ViewScatter(catalog, embedder, ids, labels)
    weights = balanced(labels)
    np.testing.assert_allclose(scatter.weighted(weights), brute_force(catalog, embedder, ids, weights),
                               rtol=1e-4, atol=1e-3)
    subset = np.arange(0, 40, 3)
    np.testing.assert_allclose(scatter.weighted(weights, subset),
                               brute_force(catalog, embedder, ids[subset], weights[subset]), rtol=1e-4, atol=1e-3)
    # Weights that are not one per category are summed directly.
    uneven = np.linspace(0.5, 2.0, 40)
    np.testing.assert_allclose(scatter.weighted(uneven), brute_force(catalog, embedder, ids, uneven),
                               rtol=1e-4, atol=1e-3)


def test_corrections_redo_only_the_categories_they_touch(setup):
    catalog, embedder, ids, labels = setup
    first = ViewScatter(catalog, embedder, ids, labels)
    first.weighted(balanced(labels))
    assert first.recomputed_products_ == 40
    again = ViewScatter(catalog, embedder, ids, labels)
    again.weighted(balanced(labels))
    assert again.recomputed_products_ == 0  # from the cache file

    corrected = labels.copy()
    corrected[[0, 8]] = "milk"  # two apples were milk: apple and milk change, the other six are kept
    weights = balanced(corrected)
    scatter = ViewScatter(catalog, embedder, ids, corrected)
    result = scatter.weighted(weights)
    np.testing.assert_allclose(result, brute_force(catalog, embedder, ids, weights), rtol=1e-4, atol=1e-3)
    assert scatter.recomputed_products_ == 5 + 5  # the members of apple and milk, each read once

    # One product fewer: its category changes, every other one's weight changes by one common factor.
    fewer_ids, fewer_labels = ids[:-1], corrected[:-1]
    weights = balanced(fewer_labels)
    scatter = ViewScatter(catalog, embedder, fewer_ids, fewer_labels)
    np.testing.assert_allclose(scatter.weighted(weights), brute_force(catalog, embedder, fewer_ids, weights),
                               rtol=1e-4, atol=1e-3)
    assert scatter.recomputed_products_ == 5


def test_a_damaged_cache_file_is_rebuilt(setup):
    catalog, embedder, ids, labels = setup
    weights = balanced(labels)
    scatter = ViewScatter(catalog, embedder, ids, labels)
    expected = scatter.weighted(weights)
    path = scatter.cache_path("all")
    whole = path.read_bytes()
    for damage in (whole[:len(whole) // 2], b"\xff" * 64, whole[8:]):
        path.write_bytes(damage)
        rebuilt = ViewScatter(catalog, embedder, ids, labels)
        np.testing.assert_allclose(rebuilt.weighted(weights), expected, rtol=1e-5, atol=1e-4)
        assert rebuilt.recomputed_products_ == 40


def test_a_product_without_its_views_adds_no_scatter(setup):
    catalog, embedder, ids, labels = setup
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 255, 0)).save(buffer, "PNG")
    lonely = catalog.add_image(buffer.getvalue(), "lonely.png", "PNG", ".png", 2, 2)[0]
    catalog.store_embeddings(embedder.key, [lonely], np.ones((1, DIM), np.float16))
    all_ids, all_labels = np.append(ids, lonely), np.append(labels, "apple")
    weights = balanced(all_labels)
    scatter = ViewScatter(catalog, embedder, all_ids, all_labels)
    np.testing.assert_allclose(scatter.weighted(weights), brute_force(catalog, embedder, all_ids, weights),
                               rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="no views"):
        ViewScatter(catalog, Embedder(backbone="efficientnet_lite0", pooling="avg", views=0), ids, labels)


def test_a_cache_that_cannot_be_written_still_gives_the_sum(setup):
    """A full disk or read-only folder must not stop training: the sum is computed, not cached."""
    catalog, embedder, ids, labels = setup
    shutil.rmtree(catalog.workspace / "cache", ignore_errors=True)
    (catalog.workspace / "cache").write_text("a file where the cache folder should be")
    weights = balanced(labels)
    scatter = ViewScatter(catalog, embedder, ids, labels)
    np.testing.assert_allclose(scatter.weighted(weights), brute_force(catalog, embedder, ids, weights),
                               rtol=1e-4, atol=1e-3)
    again = ViewScatter(catalog, embedder, ids, labels)
    again.weighted(weights)
    assert again.recomputed_products_ == 40  # nothing was cached


def test_a_process_killed_while_writing_the_cache_leaves_a_correct_sum(setup):
    """SIGKILL mid-write of an *update* (after a correction): the next retrain still gets the right sum."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from conftest import REPO

    catalog, embedder, ids, labels = setup
    ViewScatter(catalog, embedder, ids, labels).weighted(balanced(labels))  # a valid cache for these labels
    corrected = labels.copy()
    corrected[:3] = "milk"
    np.save(catalog.workspace / "labels.npy", corrected.astype(str))
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from core.features.embeddings import Embedder
        from core.model import view_scatter
        from core.model._ridge import product_weights
        from core.storage import Catalog, atomic_path

        def write_slowly(path, pieces, durable=True):
            with atomic_path(path, durable) as temporary, open(temporary, "wb") as handle:
                handle.write(pieces[0])
                handle.write(pieces[1])
                handle.flush()
                print("WRITING", flush=True)
                time.sleep(120)  # killed here, half-way through the file

        view_scatter.atomic_write_bytes = write_slowly
        catalog = Catalog(sys.argv[1])
        labels = np.load(catalog.workspace / "labels.npy").astype(object)
        names = sorted(set(labels))
        weights = product_weights(np.array([names.index(label) for label in labels]), len(names))
        embedder = Embedder(backbone="efficientnet_lite0", pooling="avg", views={VIEWS})
        view_scatter.ViewScatter(catalog, embedder, {ids.tolist()}, labels).weighted(weights)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(catalog.workspace)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    output = ""
    for line in process.stdout:
        output += line
        if "WRITING" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, output[-2000:]
    assert Catalog(catalog.workspace).discard_partial_files(max_age_seconds=0) == 1, "the half-written file"
    weights = balanced(corrected)
    after = ViewScatter(catalog, embedder, ids, corrected)
    np.testing.assert_allclose(after.weighted(weights), brute_force(catalog, embedder, ids, weights),
                               rtol=1e-4, atol=1e-3)
    assert 0 < after.recomputed_products_ < 40, "the intact old cache was brought up to date, not rebuilt"
