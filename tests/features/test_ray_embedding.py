"""Embedding on a real local Ray (2 workers) gives the in-process path's features."""

import numpy as np

from conftest import REPO
from core.features.embeddings import Embedder, embed_catalog
from core.features.ray_embedding import embed_catalog_on_ray
from core.storage import ingest
from core.storage.catalog import Catalog

# A few hundred real product photos: grocery val (the shared dataset CI has too).
GROCERY_VAL = REPO.parent / "shared" / "datasets" / "grocery" / "val"


def test_ray_workers_embed_like_the_in_process_path(tmp_path):
    photos = sorted(GROCERY_VAL.rglob("*.jpg"))[:200]
    assert len(photos) == 200, f"the grocery dataset is expected at {GROCERY_VAL}"
    embedder = Embedder()
    local, distributed = Catalog(tmp_path / "local"), Catalog(tmp_path / "ray")
    for catalog in (local, distributed):
        ingest.import_paths(catalog, photos)
    lost = distributed.products()[7]
    distributed.image_path(lost).unlink()  # a photo gone from the disk: reported, the rest goes on

    expected = embed_catalog(local, embedder)
    report = embed_catalog_on_ray(distributed, embedder, workers=2, batch_size=16)

    assert expected.computed == 200
    assert report.computed == 199 and [pid for pid, _ in report.failed] == [lost.id]
    assert "cannot read" in report.failed[0][1]
    by_sha = {product.id: product.sha256 for product in distributed.products()}
    local_sha = {product.sha256: product.id for product in local.products()}
    for key in (embedder.key, embedder.view_key(0), embedder.prediction_key):
        ids, vectors = distributed.embeddings(key)
        assert len(ids) == 199 and lost.id not in ids.tolist()
        reference = dict(zip(*local.embeddings(key, [local_sha[by_sha[int(pid)]] for pid in ids])))
        expected_rows = np.stack([reference[local_sha[by_sha[int(pid)]]] for pid in ids])
        cosine = (vectors * expected_rows).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected_rows,
                                                                                                    axis=1)
        assert cosine.min() > 0.9999, (key, cosine.min())
        np.testing.assert_allclose(vectors, expected_rows, atol=5e-3)
    # Nothing left to do: a second run computes nothing and starts no workers.
    again = embed_catalog_on_ray(distributed, embedder, product_ids=[p.id for p in distributed.products()
                                                                      if p.id != lost.id])
    assert again.computed == 0 and again.cached == 199
