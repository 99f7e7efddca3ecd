import numpy as np
import pytest

from conftest import demo_photos
from core.features.embeddings import Embedder, embed_catalog, view_seed
from core.storage import ingest
from core.storage.catalog import Catalog


def test_embeds_catalog_once_and_reports_progress(workspace, embedder):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, demo_photos("Lemon")[:5] + demo_photos("Banana")[:5])
    calls = []
    report = embed_catalog(catalog, embedder, progress=lambda done, total, _: calls.append((done, total)),
                           chunk_size=4)
    assert report.computed == 10 and report.cached == 0 and not report.failed
    assert calls[-1] == (10, 10)
    assert all(b >= a for (a, _), (b, _) in zip(calls, calls[1:]))
    ids, vectors = catalog.embeddings(embedder.key)
    assert vectors.shape == (10, embedder.feature_dim) and np.isfinite(vectors).all()
    again = embed_catalog(catalog, embedder)
    assert again.computed == 0 and again.cached == 10


def test_views_are_embedded_with_the_photo_reproducible_and_close(workspace, embedder):
    assert embedder.views >= 1
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_photos(name)[0] for name in ("Pineapple", "Lemon", "Oatly-Oat-Milk")])
    embed_catalog(catalog, embedder, product_ids=catalog.product_ids()[:2])
    ids, views = catalog.embeddings(embedder.view_key(0))
    assert len(ids) == 2, "views come with the photo, from the same decode"
    assert embed_catalog(catalog, embedder, view=0, product_ids=ids.tolist()).computed == 0
    embed_catalog(catalog, embedder)
    photo_ids, photos = catalog.embeddings(embedder.key)
    assert not np.allclose(views, photos[:2]), "a view is a different crop, so its features differ"
    # ...but it still shows the same product: each view is nearest to its own photo.
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    nearest = photo_ids[(unit(views) @ unit(photos).T).argmax(axis=1)]
    assert nearest.tolist() == ids.tolist()
    product = catalog.products(ids.tolist())[0]
    again, _ = embedder.embed_sources([(catalog.image_path(product), view_seed(product.sha256, 0))],
                                      loader=embedder.load_view_pixels, flip_tta=False)
    np.testing.assert_allclose(again[0], views[0], atol=0.02)


def test_prediction_vector_is_the_photo_averaged_with_its_views(workspace, embedder):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, demo_photos("Lemon")[:2])
    embed_catalog(catalog, embedder)
    ids, plain = catalog.embeddings(embedder.key)
    views = [catalog.embeddings(embedder.view_key(view))[1] for view in range(embedder.views)]
    prediction_ids, averaged = catalog.embeddings(embedder.prediction_key)
    assert embedder.prediction_key != embedder.key and np.array_equal(prediction_ids, ids)
    np.testing.assert_allclose(averaged, (plain + sum(views)) / (1 + embedder.views), atol=2e-3)
    assert Embedder(backbone=embedder.backbone, views=0).prediction_key == embedder.key


def test_features_match_a_direct_forward_pass(embedder):
    # The float32 path; the int8 one is compared with it in test_quantized.py.
    embedder = Embedder(backbone=embedder.backbone, views=0, precision="float32")
    photo = demo_photos("Orange")[0]
    pixels = embedder.load_pixels(photo)
    direct = embedder.model.predict(pixels[None].astype("float32"), verbose=0)[0]
    mirrored = embedder.model.predict(pixels[None, :, ::-1].astype("float32"), verbose=0)[0]
    vectors, failures = embedder.embed_sources([photo])
    assert not failures and not embedder.flip_tta, "the default has no mirror pass (PRODUCTLENS_MIRROR)"
    np.testing.assert_allclose(vectors[0], direct, rtol=1e-4, atol=1e-4)
    with_mirror, _ = Embedder(backbone=embedder.backbone, views=0, precision="float32", flip_tta=True).embed_sources(
        [photo])
    np.testing.assert_allclose(with_mirror[0], (direct + mirrored) / 2, rtol=1e-4, atol=1e-4)


def test_same_category_photos_are_closer_than_other_categories(embedder):
    lemons, _ = embedder.embed_sources(demo_photos("Lemon")[:4])
    milk, _ = embedder.embed_sources(demo_photos("Arla-Standard-Milk")[:4])
    normalise = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    lemons, milk = normalise(lemons), normalise(milk)
    within = (lemons @ lemons.T)[np.triu_indices(4, 1)].mean()
    across = (lemons @ milk.T).mean()
    assert within > across + 0.1


def test_a_photo_damaged_after_import_is_reported_not_fatal(workspace, embedder):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, demo_photos("Lemon")[:3])
    damaged = catalog.products()[1]
    catalog.image_path(damaged).write_bytes(b"broken")
    report = embed_catalog(catalog, embedder)
    assert report.computed == 2
    assert [pid for pid, _ in report.failed] == [damaged.id]
    assert catalog.missing_embeddings(embedder.key) == [damaged.id]


def test_embedding_key_separates_settings(monkeypatch):
    lite0 = "efficientnet_lite0"
    monkeypatch.setenv("PRODUCTLENS_PRECISION", "float32")
    assert Embedder(backbone=lite0).key == "efficientnet_lite0+multi+noflip", "no mirror pass by default"
    assert Embedder(backbone=lite0, precision="int8").key == "efficientnet_lite0+multi+noflip+int8"
    monkeypatch.setenv("PRODUCTLENS_MIRROR", "1")  # the keys of workspaces from before stop 28
    assert Embedder(backbone=lite0).key == "efficientnet_lite0+multi"
    assert Embedder(backbone=lite0, pooling="avg").key == "efficientnet_lite0", "the key of workspaces before pooling"
    assert Embedder(backbone=lite0, image_size=224).key == "efficientnet_lite0@224+multi"
    assert Embedder(backbone=lite0).view_key(1) == "efficientnet_lite0+multi#view1"
    assert Embedder(backbone=lite0, views=4).prediction_key == "efficientnet_lite0+multi#tta4"
    assert Embedder(backbone=lite0, precision="bfloat16").key == "efficientnet_lite0+multi", "bfloat16 is rounding"
    assert Embedder(backbone=lite0, precision="int8", views=4).prediction_key == "efficientnet_lite0+multi+int8#tta4"
    assert Embedder(backbone=lite0, flip_tta=False, crop="center", pooling="avg").key == lite0 + "+center+noflip"
    assert Embedder(backbone=lite0, weights=None).key.endswith("+random")
    assert Embedder(backbone="efficientnet_lite0_lite2").key == "efficientnet_lite0_lite2+multi"
    with pytest.raises(ValueError, match="pooling"):
        Embedder(backbone="resnet50", pooling="multi")
    with pytest.raises(ValueError, match="views"):
        Embedder(views=-1)
    with pytest.raises(ValueError):
        Embedder(crop="zoom")


def test_rejects_wrong_pixel_shape(embedder):
    with pytest.raises(ValueError, match="shape"):
        embedder.embed_pixels(np.zeros((1, 10, 10, 3), np.uint8))


def test_bfloat16_is_opt_in_and_close_to_float32(monkeypatch):
    from core import settings

    monkeypatch.delenv("PRODUCTLENS_PRECISION", raising=False)
    assert settings.embedding_precision() != "bfloat16", "bfloat16 changes predictions: never the default"
    monkeypatch.setenv("PRODUCTLENS_PRECISION", "bfloat16")
    low = Embedder(backbone="efficientnet_lite0", views=0)
    assert low.precision == "bfloat16"
    photos = demo_photos("Lemon")[:2]
    reference, _ = Embedder(backbone="efficientnet_lite0", views=0, precision="float32").embed_sources(photos)
    vectors, _ = low.embed_sources(photos)
    assert vectors.dtype == np.float32
    cosine = (reference * vectors).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
    assert (cosine > 0.99).all() and not np.array_equal(reference, vectors)
    import keras

    assert keras.mixed_precision.global_policy().name == "float32", "the policy is restored after building"
    monkeypatch.setenv("PRODUCTLENS_PRECISION", "float16")
    with pytest.raises(ValueError, match="PRODUCTLENS_PRECISION"):
        settings.embedding_precision()
