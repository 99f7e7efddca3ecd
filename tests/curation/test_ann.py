import numpy as np
import pytest

from conftest import embedded_demo
from core.curation import duplicates
from core.curation.ann import ApproximateIndex, persistent_index
from core.curation.similarity import ExactIndex, catalog_index, neighbour_groups
from core.features.embeddings import embed_catalog
from core.storage import ingest
from core.storage.catalog import Catalog


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    return (centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def recall_at(k: int, approximate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approximate, exact)]))


def test_the_graph_finds_what_exact_search_finds():
    vectors = clustered(3000)
    ids = np.arange(1000, 4000)
    graph = ApproximateIndex().fit(ids, vectors)
    exact = ExactIndex().fit(ids, vectors)
    found, similarities = graph.query(vectors[:300], k=10)
    expected, expected_similarities = exact.query(vectors[:300], k=10)
    assert recall_at(10, found, expected) >= 0.95
    # (8-bit quantised vectors: similarities within a few thousandths)
    assert (found[:, 0] == ids[:300]).all() and np.allclose(similarities[:, 0], 1.0, atol=5e-3)
    np.testing.assert_allclose(similarities[:, :3], expected_similarities[:, :3], atol=1e-2)


def test_the_graph_grows_forgets_and_survives_a_save(tmp_path):
    vectors = clustered(2000, seed=1)
    graph = ApproximateIndex().fit(np.arange(1500), vectors[:1500])
    graph.add(np.arange(1500, 2000), vectors[1500:])
    assert len(graph) == 2000
    found, _ = graph.query(vectors[1500:1600], k=1)
    assert (found[:, 0] == np.arange(1500, 1600)).all(), "added products are found"
    graph.remove([1500, 1501])
    found, _ = graph.query(vectors[1500:1502], k=5)
    assert not np.isin(found, [1500, 1501]).any() and len(graph) == 1998
    graph.save(tmp_path / "graph.hnsw")
    loaded = ApproximateIndex.load(tmp_path / "graph.hnsw")
    np.testing.assert_array_equal(loaded.query(vectors[:50], k=5)[0], graph.query(vectors[:50], k=5)[0])
    assert len(loaded) == 1998
    with pytest.raises(RuntimeError, match="fit"):
        ApproximateIndex().query(vectors[:1])


@pytest.fixture(scope="module")
def demo_catalogue(tmp_path_factory, embedder):
    return embedded_demo(tmp_path_factory, embedder, "ann")


def test_the_kept_graph_adds_only_new_products_and_drops_archived_ones(demo_catalogue, embedder, monkeypatch,
                                                                        demo_dir):
    catalog = Catalog(demo_catalogue)
    index = catalog_index(catalog, embedder.key, approximate_from=10)
    assert isinstance(index, ApproximateIndex) and len(index) == catalog.count_products()
    ids, vectors = catalog.embeddings(embedder.key)
    exact = ExactIndex().fit(ids, vectors)
    assert recall_at(5, index.query(vectors, k=5)[0], exact.query(vectors, k=5)[0]) >= 0.95

    # A new photo (a crop of a demo photo) and an archived product: the next load brings the graph up to date.
    from PIL import Image

    cropped = demo_catalogue / "cropped.png"
    photo = Image.open(sorted((demo_dir / "Banana").glob("*.jpg"))[0])
    photo.crop((0, 0, photo.width * 3 // 4, photo.height * 3 // 4)).save(cropped)
    new_id = ingest.import_paths(catalog, [cropped]).product_ids[0]
    embed_catalog(catalog, embedder)
    archived = int(ids[3])
    catalog.archive_products([archived], reason="duplicate")
    monkeypatch.setattr(ApproximateIndex, "fit", lambda *_: pytest.fail("the kept graph was rebuilt"))
    updated = persistent_index(catalog, embedder.key)
    found, _ = updated.query(catalog.embeddings(embedder.key, [new_id])[1], k=3)
    assert found[0, 0] == new_id
    assert archived not in updated.query(vectors, k=10)[0]


def test_near_duplicates_from_neighbours_match_all_pairs(demo_catalogue, embedder):
    catalog = Catalog(demo_catalogue)
    exact = duplicates.duplicate_groups(catalog, embedder.key, threshold=0.8)
    assert exact, "the demo has look-alikes at 0.8"
    # In a single cell every pair is compared: exactly the groups of all pairs.
    one_cell = ApproximateIndex(cells=1).fit(*catalog.embeddings(embedder.key))
    assert sorted(neighbour_groups(catalog, embedder.key, one_cell, 0.8)) == sorted(g["product_ids"] for g in exact)
    # In the kept index's cells, a group may come out split (a pair across two cells), never wrongly
    # joined, and most of it is found.
    approximate = duplicates.duplicate_groups(catalog, embedder.key, threshold=0.8, approximate_from=10)
    group_of = {pid: number for number, group in enumerate(exact) for pid in group["product_ids"]}
    assert all(len({group_of.get(pid) for pid in group["product_ids"]}) == 1 and group["product_ids"][0] in group_of
               for group in approximate)
    found = sum(len(group["product_ids"]) for group in approximate)
    assert found >= 0.75 * sum(len(group["product_ids"]) for group in exact), (found, exact)


def add_vectors(catalog: Catalog, vectors: np.ndarray) -> list[int]:
    """Products with tiny real photos (each its own pixels) and the given vectors under the key "test"."""
    import io

    from PIL import Image

    ids, start = [], catalog.count_products()
    for number in range(len(vectors)):
        buffer = io.BytesIO()
        Image.new("RGB", (2, 2), ((start + number) % 256, (start + number) // 256, 7)).save(buffer, "PNG")
        ids.append(catalog.add_image(buffer.getvalue(), f"p{start + number}.png", "PNG", ".png", 2, 2)[0])
    catalog.store_embeddings("test", ids, vectors)
    return ids


def test_the_kept_index_is_built_again_once_the_catalogue_outgrows_its_cells(tmp_path, monkeypatch):
    catalog = Catalog(tmp_path / "workspace")
    vectors = clustered(1300, seed=3)
    add_vectors(catalog, vectors[:100])
    first = persistent_index(catalog, "test")
    assert first.cells_ == 10
    add_vectors(catalog, vectors[100:300])  # three times as many: the cells still hold them
    grown = persistent_index(catalog, "test")
    assert grown.cells_ == 10 and len(grown) == 300
    add_vectors(catalog, vectors[300:])  # thirteen times: twice the cells' worth of products and more
    rebuilt = persistent_index(catalog, "test")
    assert rebuilt.cells_ == 36 and len(rebuilt) == 1300
    exact = ExactIndex().fit(*catalog.embeddings("test"))
    assert recall_at(10, rebuilt.query(vectors[:100], k=10)[0], exact.query(vectors[:100], k=10)[0]) >= 0.95


def test_twins_on_either_side_of_a_cell_border_are_paired_through_the_second_nearest_cell():
    rng = np.random.default_rng(4)
    dim = 8
    left = np.eye(dim)[0] + 0.05 * rng.normal(size=(300, dim))
    right = np.eye(dim)[1] + 0.05 * rng.normal(size=(300, dim))
    border = (np.eye(dim)[0] + np.eye(dim)[1]) / np.sqrt(2)
    twins = np.stack([border + 0.02 * np.eye(dim)[0], border + 0.02 * np.eye(dim)[1]])  # cosine > 0.999
    vectors = np.concatenate([left, right, twins]).astype(np.float32)
    index = ApproximateIndex(cells=2).fit(np.arange(len(vectors)), vectors)
    cell_of = index._inverted().quantizer.search(np.ascontiguousarray(twins / np.linalg.norm(twins, axis=1,
                                                                                            keepdims=True),
                                                                      dtype=np.float32), 1)[1][:, 0]
    assert cell_of[0] != cell_of[1], "the twins sit in different cells"
    twin_pair = [600, 601]
    assert twin_pair not in index.close_pairs(0.99, second_cells=False).tolist()
    pairs = index.close_pairs(0.99)
    assert twin_pair in pairs.tolist()
    # Every pair is a real one, up to the 8-bit codes' rounding, and none twice.
    assert (_cosines(vectors)[pairs[:, 0], pairs[:, 1]] >= 0.99 - 0.01).all()
    assert len({tuple(pair) for pair in pairs.tolist()}) == len(pairs) and (pairs[:, 0] < pairs[:, 1]).all()


def _cosines(vectors):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T
