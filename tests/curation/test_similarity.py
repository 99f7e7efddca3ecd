import io

import numpy as np
import pytest
from PIL import Image

from conftest import demo_photos
from core.curation.similarity import ExactIndex, catalog_index, near_duplicate_groups
from core.features.embeddings import embed_catalog
from core.storage import ingest
from core.storage.catalog import Catalog


@pytest.fixture(scope="module")
def catalog_with_near_duplicate(tmp_path_factory, demo_dir, embedder):
    catalog = Catalog(tmp_path_factory.mktemp("similar"))
    ingest.import_paths(catalog, [demo_dir])
    original = demo_photos("Pineapple")[3]
    image = Image.open(original)
    buffer = io.BytesIO()
    image.resize((300, 300)).save(buffer, format="JPEG", quality=70)  # re-encoded and resized copy
    report = ingest.import_bytes(catalog, "pineapple-copy.jpg", buffer.getvalue())
    embed_catalog(catalog, embedder)
    original_id = next(p.id for p in catalog.products() if p.filename == original.name)
    return catalog, original_id, report.added[0]


def test_a_known_product_is_its_own_nearest_neighbour(catalog_with_near_duplicate, embedder):
    catalog, original_id, copy_id = catalog_with_near_duplicate
    index = catalog_index(catalog, embedder.key)
    ids, vectors = catalog.embeddings(embedder.key)
    neighbours, scores = index.query(vectors, k=3)
    assert (neighbours[:, 0] == ids).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-3)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    row = int(np.flatnonzero(ids == original_id)[0])
    assert neighbours[row, 1] == copy_id, "the re-encoded copy is the closest other product"


def test_injected_near_duplicate_is_grouped(catalog_with_near_duplicate, embedder):
    catalog, original_id, copy_id = catalog_with_near_duplicate
    ids, vectors = catalog.embeddings(embedder.key)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    position = {int(pid): i for i, pid in enumerate(ids)}
    similarity = float(unit[position[original_id]] @ unit[position[copy_id]])
    assert similarity >= 0.95, "a re-encoded, resized copy stays above the default threshold"
    # The pair is grouped exactly when the threshold is at or below its similarity.
    below = near_duplicate_groups(ids, vectors, threshold=similarity - 1e-4)
    above = near_duplicate_groups(ids, vectors, threshold=min(1.0, similarity + 1e-4))
    assert any({original_id, copy_id} <= set(group) for group in below)
    assert not any({original_id, copy_id} <= set(group) for group in above)


def test_exact_index_basics():
    index = ExactIndex().fit([10, 20, 30], np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
    ids, scores = index.query(np.array([1.0, 0.1]), k=2)
    assert ids.tolist() == [[10, 30]]
    with pytest.raises(RuntimeError):
        ExactIndex().query(np.ones(2))
    with pytest.raises(ValueError):
        ExactIndex().fit([1], np.ones((2, 2)))


def test_similar_and_duplicates_from_the_command_line(catalog_with_near_duplicate, embedder):
    import json
    import subprocess
    import sys

    from conftest import REPO

    catalog, original_id, copy_id = catalog_with_near_duplicate

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "core", "--workspace", str(catalog.workspace), *args],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    neighbours = cli("similar", str(original_id), "--k", "2", "--json")
    assert [n["product_id"] for n in neighbours] == [original_id, copy_id]
    by_photo = cli("similar", str(demo_photos("Pineapple")[3]), "--k", "1", "--json")
    assert by_photo[0]["product_id"] == original_id and by_photo[0]["similarity"] > 0.99
    groups = cli("duplicates", "--threshold", "0.95", "--json")
    assert any({original_id, copy_id} <= {p["product_id"] for p in group["products"]} for group in groups)
    ids, vectors = catalog.embeddings(embedder.key)
    unit = dict(zip(ids.tolist(), vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
    for group in groups:
        members = [p["product_id"] for p in group["products"]]
        pairwise = np.array([[unit[a] @ unit[b] for b in members] for a in members])
        np.fill_diagonal(pairwise, -1.0)
        # Single linkage at 0.95: every member has a partner at or above it; min_similarity is the
        # weakest pair in the group.
        assert len(members) >= 2 and (pairwise.max(axis=1) >= 0.95 - 1e-6).all()
        assert group["min_similarity"] == pytest.approx(pairwise[pairwise > -1].min(), abs=1e-4)
