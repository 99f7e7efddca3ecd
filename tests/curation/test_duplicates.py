import io

import pytest
from PIL import Image

from conftest import demo_photos
from core.curation import duplicates
from core.features.embeddings import embed_catalog
from core.storage import ingest
from core.storage.catalog import Catalog


@pytest.fixture(scope="module")
def default_embedder():
    """The product's default backbone (the suite's default is Lite0): the threshold is calibrated on
    its features (benchmarks/near_duplicates.py). Views play no part in duplicates."""
    from core.features.embeddings import Embedder

    return Embedder(backbone="efficientnet_lite0_lite2", views=0)


@pytest.fixture
def catalog(workspace, demo_dir, default_embedder):
    embedder = default_embedder
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    ingest.import_paths(catalog, [demo_dir / "Banana"], label="Banana")
    original = demo_photos("Lemon")[2]
    buffer = io.BytesIO()
    with Image.open(original) as image:  # cropped, resized and re-encoded: a near-duplicate
        width, height = image.size
        image.crop((width // 20, height // 20, width, height)).resize((400, 400)).save(buffer, "JPEG", quality=60)
    copy_id = ingest.import_bytes(catalog, "lemon-supplier-upload.jpg", buffer.getvalue()).added[0]
    catalog.set_labels([(copy_id, "Lime")], source="import")  # the copy came in with another label
    embed_catalog(catalog, embedder)
    original_id = next(p.id for p in catalog.products() if p.filename == original.name)
    return catalog, embedder.key, original_id, copy_id


def test_a_cropped_reencoded_copy_is_grouped_with_its_original(catalog):
    catalog, key, original_id, copy_id = catalog
    groups = duplicates.duplicate_groups(catalog, key)
    group = next(g for g in groups if copy_id in g["product_ids"])
    assert original_id in group["product_ids"]
    assert group["min_similarity"] >= duplicates.DEFAULT_THRESHOLD
    assert "Lemon" in group["labels"] and "Lime" in group["labels"]
    strict = duplicates.duplicate_groups(catalog, key, threshold=0.9999)
    assert sum(len(g["product_ids"]) for g in strict) < sum(len(g["product_ids"]) for g in groups)
    with pytest.raises(ValueError):
        duplicates.duplicate_groups(catalog, key, threshold=1.5)


def test_keep_one_archives_the_others_without_losing_anything(catalog):
    catalog, key, original_id, copy_id = catalog
    before = catalog.count_products()
    kept = duplicates.keep_one(catalog, [original_id, copy_id], keep=original_id, label="Lemon", author="ana")
    assert kept == (1, [])
    assert catalog.count_products() == before - 1
    assert copy_id not in catalog.product_ids() and copy_id not in catalog.current_labels()
    assert copy_id not in catalog.embeddings(key)[0].tolist()
    assert catalog.current_label(original_id) == "Lemon"
    record = catalog.archived()[0]
    assert (record["product_id"], record["kept_product_id"], record["author"]) == (copy_id, original_id, "ana")
    assert catalog.image_path(copy_id).exists(), "the photo itself is kept"
    assert all(copy_id not in g["product_ids"] for g in duplicates.duplicate_groups(catalog, key))
    assert catalog.restore_products([copy_id]) == 1
    assert copy_id in catalog.product_ids() and catalog.current_label(copy_id) == "Lime"
    with pytest.raises(ValueError):
        duplicates.keep_one(catalog, [original_id, copy_id], keep=12345)


def test_merge_labels_gives_the_group_one_label(catalog):
    catalog, key, original_id, copy_id = catalog
    shown = {pid: catalog.current_label(pid) for pid in (original_id, copy_id)}
    catalog.set_labels([(original_id, "Kiwi")], author="cy")  # after the group was shown
    changed, conflicts = duplicates.merge_labels(catalog, [original_id, copy_id], "Lemon", author="bo", seen=shown)
    assert changed == 1 and catalog.current_label(copy_id) == "Lemon"
    assert catalog.current_label(original_id) == "Kiwi", "a change made after the group was shown is kept"
    assert [(c.product_id, c.current_label) for c in conflicts] == [(original_id, "Kiwi")]
    assert duplicates.merge_labels(catalog, [original_id, copy_id], "Lemon", author="bo") == (1, [])
    assert catalog.current_label(copy_id) == catalog.current_label(original_id) == "Lemon"
    with pytest.raises(ValueError):
        duplicates.merge_labels(catalog, [original_id], " ")


def test_uploading_an_archived_photo_again_brings_it_back(catalog, demo_dir):
    catalog, key, original_id, copy_id = catalog
    catalog.archive_products([original_id], reason="test")
    assert original_id not in catalog.product_ids()
    report = ingest.import_paths(catalog, [demo_photos("Lemon")[2]])
    assert original_id in catalog.product_ids() and report.duplicates


def test_groups_found_at_scale_are_kept_until_products_are_embedded_or_archived(catalog):
    """From ``approximate_from`` products on, groups are kept in the workspace: labels never make them be found
    again; a new or archived product does, unless the page asks for the kept ones (``reuse_kept``)."""
    catalog, key, original_id, copy_id = catalog
    first = duplicates.find_groups(catalog, key, approximate_from=5)
    assert first.current and any({original_id, copy_id} <= set(group) for group in first.groups)
    assert list((catalog.workspace / "cache").glob("duplicates-*.npz"))
    state = duplicates.catalogue_state(catalog, key)
    catalog.set_labels([(copy_id, "Lemon")], source="human")
    assert duplicates.catalogue_state(catalog, key) == state
    again = duplicates.find_groups(catalog, key, approximate_from=5)
    assert (again.found_at, again.groups, again.current) == (first.found_at, first.groups, True)
    described = duplicates.describe_groups(catalog, key, again.groups)
    group = next(g for g in described if copy_id in g["product_ids"])
    assert group["labels"][group["product_ids"].index(copy_id)] == "Lemon" and "Lime" not in group["labels"]

    catalog.archive_products([copy_id], reason="test")
    assert duplicates.catalogue_state(catalog, key) != state
    kept = duplicates.find_groups(catalog, key, approximate_from=5, reuse_kept=True)
    assert (kept.found_at, kept.current) == (first.found_at, False)
    # The archived copy leaves the kept group at once; a group left with one member goes.
    assert all(copy_id not in g["product_ids"] for g in duplicates.describe_groups(catalog, key, kept.groups))
    fresh = duplicates.find_groups(catalog, key, approximate_from=5)
    assert fresh.current and fresh.found_at > first.found_at
    assert all(copy_id not in group for group in fresh.groups)
    assert duplicates.find_groups(catalog, key, approximate_from=5, reuse_kept=True).found_at == fresh.found_at


def test_the_catalogue_state_tells_which_products_are_archived_not_only_how_many(catalog):
    catalog, key, original_id, copy_id = catalog
    catalog.archive_products([original_id], reason="test")
    one = duplicates.catalogue_state(catalog, key)
    catalog.restore_products([original_id])
    catalog.archive_products([copy_id], reason="test")
    assert duplicates.catalogue_state(catalog, key) != one  # same count archived, another product
