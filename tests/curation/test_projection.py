import numpy as np
import pytest

from conftest import embedded_demo
from core.curation import review
from core.curation.projection import SampledMap, catalogue_map, exact_neighbours, project, umap_projection
from core.storage.catalog import Catalog


def test_exact_neighbours_match_brute_force_and_start_with_the_product_itself():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 12)).astype(np.float32)
    features[7] = features[3]  # an exact duplicate must not displace the product itself
    indices, distances = exact_neighbours(features, 5, block=64)
    assert (indices[:, 0] == np.arange(300)).all() and np.allclose(distances[:, 0], 0.0)
    assert indices[3, 1] == 7 and distances[3, 1] < 1e-5
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    brute = np.argsort(-(unit @ unit.T), axis=1)
    for row in range(300):
        assert set(indices[row, 1:]) == set(brute[row][brute[row] != row][:4]), row
    assert (np.diff(distances, axis=1) >= -1e-6).all(), "nearest first"


def test_projection_separates_clusters_and_is_reproducible():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 32)) * 5
    features = np.concatenate([centre + rng.normal(size=(60, 32)) for centre in centres]).astype(np.float32)
    first = project(features)
    assert first.shape == (180, 2) and np.isfinite(first).all()
    np.testing.assert_allclose(project(features), first, atol=1e-4)
    means = np.stack([first[i * 60:(i + 1) * 60].mean(axis=0) for i in range(3)])
    spread = max(first[i * 60:(i + 1) * 60].std(axis=0).max() for i in range(3))
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread, "each cluster is its own island"


def test_warm_up_compiles_the_map_kernels_and_a_map_drawn_meanwhile_waits_for_it(tmp_path):
    """The app warms up in a background thread while someone may already open Explore: the map must
    neither see a half-imported umap nor fail; afterwards the layout kernels are compiled in the process."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import threading, numpy as np
from core.curation import projection
warm = threading.Thread(target=projection.warm_up)
warm.start()
coordinates = projection.project(np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32))
warm.join()
import umap.layouts
assert coordinates.shape == (40, 2) and np.isfinite(coordinates).all()
assert not projection.warm_up_needed(), "the machine's disk cache now holds the kernels"
print(len(umap.layouts._nb_optimize_layout_euclidean_single_epoch.signatures))
"""
    repo = Path(__file__).resolve().parents[2]
    fresh = "from core.curation import projection; print(projection.warm_up_needed())"
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    before = subprocess.run([sys.executable, "-c", fresh], cwd=repo, capture_output=True, text=True, env=env)
    assert before.stdout.strip().splitlines()[-1] == "True", "a new machine needs the warm-up"
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 1


def test_the_app_starts_the_warm_up_once_per_server(monkeypatch, tmp_path):
    import threading
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import pages.shared
    from core.curation import projection
    from core.features import quantized
    from pages.shared import warm_up_in_background  # a fresh server: nothing started yet

    monkeypatch.setenv("PRODUCTLENS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("PRODUCTLENS_PRECISION", raising=False)
    monkeypatch.setattr(pages.shared, "WARM_UP_DELAY_S", 0.0)
    calls = []
    monkeypatch.setattr(projection, "warm_up", lambda: calls.append(("map", threading.current_thread().name)))
    monkeypatch.setattr(quantized, "quantized_graph",
                        lambda *args, **kwargs: calls.append(("int8", threading.current_thread().name)))
    import time

    # A machine whose disk caches hold the kernels and the 8-bit model; then one without kernels; one without the model.
    for kernels, conversion in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(projection, "warm_up_needed", lambda: kernels)
        monkeypatch.setattr(pages.shared, "quantized_model_needed", lambda: conversion)
        warm_up_in_background.clear()
        calls.clear()
        for _ in range(2):
            AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120).run()
            deadline = time.time() + (5 if not (kernels or conversion) else 60)
            while not calls and time.time() < deadline:  # started by the app itself, not by this test
                time.sleep(0.05)
        time.sleep(0.5)
        expected = [("map", "productlens-warm-up")] if kernels else []
        expected += [("int8", "productlens-warm-up")] if conversion else []
        assert calls == expected, (kernels, conversion)


def test_a_new_machine_needs_the_8_bit_model_converted(monkeypatch, tmp_path):
    from pages.shared import quantized_model_needed

    monkeypatch.delenv("PRODUCTLENS_PRECISION", raising=False)
    monkeypatch.setenv("PRODUCTLENS_CACHE", str(tmp_path))
    assert quantized_model_needed()
    monkeypatch.setenv("PRODUCTLENS_PRECISION", "float32")
    assert not quantized_model_needed(), "float32 by choice: nothing to convert"


def clustered(n: int, clusters: int = 12, dim: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3
    members = rng.integers(0, clusters, n)
    return (centres[members] + rng.normal(size=(n, dim))).astype(np.float32), members


def nearest_fitted(fitted: SampledMap, coordinates: np.ndarray) -> np.ndarray:
    distances = np.linalg.norm(coordinates[:, None, :] - fitted.coordinates_[None, :, :], axis=2)
    return distances.argmin(axis=1)


def test_a_map_fitted_on_a_sample_places_the_rest_beside_their_own_kind():
    features, members = clustered(1500)
    fitted = SampledMap(seed=0).fit(np.arange(300), features[:300])
    placed = fitted.place(features[300:])
    assert placed.shape == (1200, 2) and np.isfinite(placed).all()
    same = members[:300][nearest_fitted(fitted, placed)] == members[300:]
    assert same.mean() >= 0.95, same.mean()
    # A fitted product placed again lands on (or right beside) its own spot.
    moved = np.linalg.norm(fitted.place(features[:300]) - fitted.coordinates_, axis=1)
    extent = np.ptp(fitted.coordinates_, axis=0).max()
    assert np.median(moved) < 0.01 * extent and np.quantile(moved, 0.9) < 0.05 * extent
    with pytest.raises(ValueError, match="fit"):
        SampledMap().place(features[:3])


def test_a_big_sample_places_by_its_graph_where_the_exact_search_does():
    features, _ = clustered(1500)
    exact = SampledMap(seed=0).fit(np.arange(600), features[:600])
    graph = SampledMap(seed=0, exact_search_up_to=100).fit(np.arange(600), features[:600])
    assert type(exact._search()).__name__ == "IndexFlatIP" and type(graph._search()).__name__ == "IndexHNSWFlat"
    np.testing.assert_array_equal(graph.coordinates_, exact.coordinates_)
    moved = np.linalg.norm(graph.place(features[600:]) - exact.place(features[600:]), axis=1)
    assert np.quantile(moved, 0.99) < 1e-3 * np.ptp(exact.coordinates_, axis=0).max(), moved.max()


@pytest.fixture(scope="module")
def demo_catalogue(tmp_path_factory, embedder):
    return Catalog(embedded_demo(tmp_path_factory, embedder, "map"))


def test_a_sampled_map_places_new_products_without_drawing_the_map_again(demo_catalogue, embedder):
    catalog = demo_catalogue
    ids, vectors = catalog.embeddings(embedder.key)
    key = "copied-features"
    catalog.store_embeddings(key, ids[:60], vectors[:60])
    first_ids, first = umap_projection(catalog, key, sample=40)
    assert first_ids.tolist() == ids[:60].tolist() and np.isfinite(first).all()
    fitted_files = sorted((catalog.workspace / "cache").glob("umap-sampled-*.npz"))
    assert len(fitted_files) == 1, "this test runs first in the module"
    fitted_at = fitted_files[0].stat().st_mtime_ns
    # Real photos: a placed product lands beside fitted ones of its own category.
    labels = catalog.current_labels()
    fitted = SampledMap.from_state(np.load(fitted_files[0]))
    placed = np.isin(first_ids, fitted.ids_, invert=True)
    neighbours = fitted.ids_[nearest_fitted(fitted, first[placed])]
    pairs = [(labels[a], labels[b]) for a, b in zip(first_ids[placed].tolist(), neighbours.tolist())
             if a in labels and b in labels]
    agree = np.mean([a == b for a, b in pairs])
    assert len(pairs) >= 5 and agree >= 0.7, (len(pairs), agree)

    catalog.store_embeddings(key, ids[60:70], vectors[60:70])
    second_ids, second = umap_projection(catalog, key, sample=40)
    assert second_ids.tolist() == ids[:70].tolist()
    np.testing.assert_array_equal(second[:60], first), "products already placed keep their place"
    assert fitted_files[0].stat().st_mtime_ns == fitted_at, "the map was not fitted again"
    np.testing.assert_allclose(second[60:], fitted.place(vectors[60:70]), atol=1e-5)

    catalog.archive_products([int(ids[0]), int(ids[1])], "duplicate")
    try:
        third_ids, third = umap_projection(catalog, key, sample=40)
        assert third_ids.tolist() == ids[2:70].tolist()
        np.testing.assert_array_equal(third, second[2:])
        # 70 vectors stored but 68 live: a sample of 69 takes the sampled path with fewer products than that.
        assert umap_projection(catalog, key, sample=69)[0].tolist() == ids[2:70].tolist()
    finally:
        catalog.restore_products([int(ids[0]), int(ids[1])])


def test_a_catalogue_that_doubled_gets_a_new_map(demo_catalogue, embedder):
    catalog = demo_catalogue
    ids, vectors = catalog.embeddings(embedder.key)
    key = "growing-features"
    catalog.store_embeddings(key, ids[:25], vectors[:25])
    earlier = set((catalog.workspace / "cache").glob("umap-sampled-*.npz"))
    umap_projection(catalog, key, sample=20)
    (fitted_file,) = set((catalog.workspace / "cache").glob("umap-sampled-*.npz")) - earlier
    before = np.load(fitted_file)["catalogue_size"]
    catalog.store_embeddings(key, ids[25:60], vectors[25:60])  # 60 > 2 x 25
    umap_projection(catalog, key, sample=20)
    assert int(before) == 25 and int(np.load(fitted_file)["catalogue_size"]) == 60


def test_the_explore_table_reads_only_the_products_it_draws(demo_catalogue, embedder):
    catalog = demo_catalogue
    table = catalogue_map(catalog, embedder.key, shown=30)
    assert len(table) == 30 and table.attrs["products"] == catalog.count_embeddings(embedder.key)
    labels = catalog.current_labels()
    assert all(labels.get(int(row.product_id), review.UNLABELLED) == row.label for row in table.itertuples())
    again = catalogue_map(catalog, embedder.key, shown=30)
    assert again["product_id"].tolist() == table["product_id"].tolist(), "the same products on every rerun"
    everything = catalogue_map(catalog, embedder.key)
    assert len(everything) == table.attrs["products"]
    merged = everything.set_index("product_id").loc[table["product_id"], ["x", "y"]]
    np.testing.assert_allclose(merged.to_numpy(), table[["x", "y"]].to_numpy())
