import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import demo_photos
from core.errors import CatalogError, InvalidInputError
from core.storage import images
from core.storage.catalog import ANY, SCHEMA_VERSION, Catalog

# Every test here runs on SQLite and on a real PostgreSQL server (conftest.database).
pytestmark = pytest.mark.usefixtures("database")


def add(catalog, path):
    data = path.read_bytes()
    info = images.validate(data)
    return catalog.add_image(data, path.name, info.format, info.extension, info.width, info.height)


def test_same_photo_is_one_product(workspace):
    catalog = Catalog(workspace)
    photo = demo_photos("Lemon")[0]
    first, created = add(catalog, photo)
    second, created_again = add(catalog, photo)
    assert created and not created_again
    assert first == second
    assert catalog.count_products() == 1
    stored = catalog.image_path(first)
    assert stored.read_bytes() == photo.read_bytes()
    assert stored.parent.parent == workspace.resolve() / "images"


def test_label_history_is_append_only_and_latest_wins(workspace):
    catalog = Catalog(workspace)
    product, _ = add(catalog, demo_photos("Lemon")[0])
    catalog.set_labels([(product, "Lemon")], source="import")
    catalog.set_labels([(product, "Lime")], source="human", author="ana")
    catalog.set_labels([(product, "Lime")], source="human", author="ana")  # no-op: unchanged
    catalog.set_labels([(product, "Lemon")], source="human", author="bo")
    history = catalog.label_history(product)
    assert [(e.label, e.previous_label, e.source, e.author) for e in reversed(history)] == [
        ("Lemon", None, "import", None), ("Lime", "Lemon", "human", "ana"), ("Lemon", "Lime", "human", "bo")]
    assert catalog.current_label(product) == "Lemon"
    assert catalog.current_labels() == {product: "Lemon"}


def test_import_labels_never_override_existing_labels(workspace):
    catalog = Catalog(workspace)
    product, _ = add(catalog, demo_photos("Lemon")[0])
    catalog.set_labels([(product, "Lime")], source="human")
    changed = catalog.set_labels([(product, "Lemon")], source="import", only_if_unlabelled=True)
    assert changed == 0 and catalog.current_label(product) == "Lime"


def test_clearing_a_label_makes_the_product_unlabelled(workspace):
    catalog = Catalog(workspace)
    product, _ = add(catalog, demo_photos("Lemon")[0])
    catalog.set_labels([(product, "Lemon")])
    catalog.set_labels([(product, None)])
    assert catalog.current_labels() == {}
    assert len(catalog.label_history(product)) == 2


def test_rejects_unknown_label_source(workspace):
    with pytest.raises(ValueError, match="source"):
        Catalog(workspace).set_labels([(1, "x")], source="robot")


def test_embeddings_round_trip_as_float16(workspace):
    catalog = Catalog(workspace)
    ids = [add(catalog, p)[0] for p in demo_photos("Lemon")[:3]]
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    catalog.store_embeddings("test", ids, vectors)
    got_ids, got = catalog.embeddings("test")
    assert got_ids.tolist() == ids
    np.testing.assert_allclose(got, vectors, atol=2e-3)
    assert catalog.missing_embeddings("test") == []
    assert catalog.missing_embeddings("other") == ids


@pytest.mark.sqlite_only
def test_database_is_in_wal_mode_and_persists(workspace):
    catalog = Catalog(workspace)
    product, _ = add(catalog, demo_photos("Lemon")[0])
    catalog.set_labels([(product, "Lemon")])
    catalog.close()
    reopened = Catalog(workspace)
    assert reopened.current_labels() == {product: "Lemon"}
    mode = sqlite3.connect(reopened.database_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


@pytest.mark.sqlite_only
def test_newer_schema_is_refused(workspace):
    Catalog(workspace).close()
    with sqlite3.connect(workspace / "catalog.sqlite") as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(CatalogError, match="newer ProductLens"):
        Catalog(workspace)


@pytest.mark.sqlite_only
def test_missing_catalogue_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="import"):
        Catalog(tmp_path / "nothing-here", create=False)


def test_status_counts(workspace):
    catalog = Catalog(workspace)
    ids = [add(catalog, p)[0] for p in demo_photos("Lemon")[:3]]
    catalog.set_labels([(ids[0], "Lemon"), (ids[1], "Lime")])
    status = catalog.status()
    assert (status["products"], status["labelled"], status["unlabelled"], status["categories"]) == (3, 2, 1, 2)
    assert status["active_model"] is None


@pytest.mark.sqlite_only
def test_a_schema_1_workspace_is_migrated_without_losing_labels(workspace):
    workspace.mkdir(parents=True)
    fixture = (Path(__file__).parents[1] / "fixtures" / "schema_v1.sql").read_text()
    with sqlite3.connect(workspace / "catalog.sqlite") as connection:
        connection.executescript(fixture)
    catalog = Catalog(workspace)
    assert catalog.schema_version() == SCHEMA_VERSION == 7
    assert catalog.current_labels() == {1: "Lime", 2: "Milk"}
    assert [e.label for e in catalog.label_history(1)] == ["Lime", "Lemon"]
    catalog.set_labels([(2, "Oat-Milk")], author="cy")  # the new column is usable
    assert catalog.label_history(2)[0].action is not None
    backup = workspace / "catalog.sqlite.schema1.bak"
    with sqlite3.connect(backup) as connection:
        assert connection.execute("SELECT value FROM meta").fetchone()[0] == "1"
        assert connection.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 3
    catalog.close()
    assert Catalog(workspace).schema_version() == 7  # reopening is a no-op


def test_a_label_verdict_only_vouches_for_the_label_the_person_saw(workspace):
    catalog = Catalog(workspace)
    first, second = (add(catalog, photo)[0] for photo in demo_photos("Lemon")[:2])
    catalog.set_labels([(first, "Lemon"), (second, "Lemon")], author="import")
    catalog.set_labels([(second, "Lime")], author="bo")  # after ana loaded the page showing "Lemon"
    marked = catalog.set_label_verdicts([first, second], author="ana", seen={first: "Lemon", second: "Lemon"})
    assert marked == 1 and catalog.label_verdicts() == {first: "Lemon"}, "bo's Lime was never checked by ana"


def test_rows_live_where_the_database_setting_says(workspace, database):
    catalog = Catalog(workspace)
    add(catalog, demo_photos("Lemon")[0])
    assert catalog.is_sqlite == (database == "sqlite")
    assert (workspace / "catalog.sqlite").exists() == (database == "sqlite")
    assert catalog.image_path(1).is_file(), "photos are files in the workspace on either database"


def test_an_older_schema_is_migrated_in_place_without_losing_labels(workspace):
    catalog = Catalog(workspace)
    product, _ = add(catalog, demo_photos("Lemon")[0])
    catalog.set_labels([(product, "Lemon")], author="ana")
    catalog.set_labels([(product, "Lime")], author="bo")
    older = catalog.add_model_version("test", ["Lemon", "Lime", "Milk"], {}, {}, "models/older.keras")
    catalog.store_predictions(older, [product], [["Lime", "Lemon", "Milk"]], np.array([[0.6, 0.3, 0.1]]))
    stored = catalog._rows("SELECT margin, entropy FROM predictions", mappings=False)
    with catalog.transaction() as connection:  # what a schema-3 catalogue looked like
        connection.exec_driver_sql("ALTER TABLE predictions DROP COLUMN entropy")
        connection.exec_driver_sql("ALTER TABLE predictions DROP COLUMN margin")
        connection.exec_driver_sql("ALTER TABLE predictions DROP COLUMN new_category")
        connection.exec_driver_sql("DROP TABLE current_labels")
        connection.exec_driver_sql("DROP TABLE category_parents")
        connection.exec_driver_sql("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    catalog.close()
    migrated = Catalog(workspace)
    assert migrated.schema_version() == SCHEMA_VERSION
    assert migrated.current_labels() == {product: "Lime"}, "the current labels come from the history"
    assert migrated.status()["labelled"] == 1 and migrated.category_parents() == {}
    assert migrated._rows("SELECT margin, entropy FROM predictions", mappings=False) == stored, \
        "the upgrade computes what storing the predictions today would"
    assert stored[0][0] == pytest.approx(0.3) and stored[0][1] == pytest.approx(0.898, abs=1e-3)
    version = migrated.add_model_version("test", ["Lemon"], {}, {}, "models/none.keras")
    migrated.store_predictions(version, [product], [["Lemon"]], np.array([[0.9]]), new_category=[True])
    assert migrated.predictions(version)[product]["new_category"] is True, "the migration's column is usable"


def test_the_upgrade_fills_every_predictions_margin_and_entropy_chunk_by_chunk(workspace):
    catalog = Catalog(workspace)
    ids = [add(catalog, photo)[0] for photo in demo_photos("Lemon")[:3]]
    for name, probabilities in (("a", [[0.5, 0.3, 0.2], [0.9, 0.1, 0.0], [0.4, 0.4, 0.2]]),
                                ("b", [[0.7, 0.2], [0.6, 0.3], [0.99, 0.01]])):
        version = catalog.add_model_version("test", ["Lemon", "Lime", "Milk"], {}, {}, f"models/{name}.keras")
        catalog.store_predictions(version, ids, [["Lemon", "Lime", "Milk"]] * 3, np.array(probabilities))
    query = "SELECT product_id, model_id, margin, entropy FROM predictions ORDER BY product_id, model_id"
    stored = catalog._rows(query, mappings=False)
    with catalog.transaction():
        catalog._execute("UPDATE predictions SET margin = NULL, entropy = NULL")
        catalog._store_uncertainty(chunk_size=3)  # two chunks, the second starting inside a product
    assert catalog._rows(query, mappings=False) == stored and len(stored) == 6
    assert [round(row[2], 6) for row in stored[:2]] == [0.2, 0.5], "top two probabilities apart"


def test_ids_keep_growing_and_the_active_version_is_unique(workspace):
    catalog = Catalog(workspace)
    ids = [add(catalog, photo)[0] for photo in demo_photos("Lemon")[:3]]
    assert ids == sorted(ids) and len(set(ids)) == 3
    first = catalog.add_model_version("test", ["Lemon"], {"accuracy": 0.5}, {}, "models/a.keras")
    second = catalog.add_model_version("test", ["Lemon"], {"accuracy": 0.6}, {}, "models/b.keras")
    assert catalog.active_model_version().id == second
    catalog.activate_model_version(first)
    assert [v.is_active for v in catalog.model_versions()] == [True, False]
    assert catalog.archive_products(ids[:2], reason="duplicate", kept_product_id=ids[2]) == 2
    assert catalog.archive_products(ids[:2], reason="duplicate") == 0, "archiving twice changes nothing"
    assert catalog.product_ids() == ids[2:]
    assert catalog.restore_products(ids) == 2 and catalog.product_ids() == ids



def test_predictions_are_read_for_the_products_asked_for_only(workspace):
    catalog = Catalog(workspace)
    ids = [add(catalog, photo)[0] for photo in demo_photos("Lemon")[:4]]
    first = catalog.add_model_version("test", ["Lemon", "Lime"], {}, {}, "models/a.keras")
    second = catalog.add_model_version("test", ["Lemon", "Lime"], {}, {}, "models/b.keras")
    catalog.store_predictions(first, ids[:3], [["Lemon", "Lime"]] * 3, np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]))
    catalog.store_predictions(second, ids[:1], [["Lime", "Lemon"]], np.array([[0.6, 0.4]]))
    every = catalog.predictions(first)
    assert sorted(every) == ids[:3]
    # Asked-for ids without a prediction (ids[3]) are simply absent; repeats are read once; other versions' never.
    asked = catalog.predictions(first, [ids[2], ids[0], ids[3], ids[2]])
    assert asked == {pid: every[pid] for pid in (ids[0], ids[2])}
    assert catalog.predictions(second, ids)[ids[0]]["label"] == "Lime" and len(catalog.predictions(second, ids)) == 1
    assert catalog.predictions(first, []) == {}


def test_category_parents_refuse_loops_and_imports_never_override_a_choice(workspace):
    catalog = Catalog(workspace)
    assert catalog.set_category_parents([("Granny-Smith", "Apple"), ("Apple", "Fruit")], author="ana") == 2
    with pytest.raises(InvalidInputError, match="'Granny-Smith' cannot be the parent of 'Fruit'"):
        catalog.set_category_parents([("Leek", "Vegetables"), ("Fruit", "Granny-Smith")])
    assert "Leek" not in catalog.category_parents(), "a refused pair writes nothing of its call"
    assert catalog.set_category_parents([("Apple", "Pome")], only_if_missing=True) == 0
    assert catalog.set_category_parents([("Apple", None)]) == 1
    assert catalog.category_parents() == {"Granny-Smith": "Apple"}
    with pytest.raises(InvalidInputError, match="control characters"):
        catalog.set_category_parents([("Apple", "Fru\x1bit")])


def test_the_current_labels_always_match_the_history(workspace):
    catalog = Catalog(workspace)
    ids = [add(catalog, photo)[0] for photo in demo_photos("Lemon")[:4]]
    rng = np.random.default_rng(0)
    for _ in range(40):
        product = int(rng.choice(ids))
        label = [None, "Lemon", "Lime", "Orange"][int(rng.integers(0, 4))]
        catalog.change_labels([(product, label, catalog.current_label(product))], author="ana")
    catalog.archive_products([ids[0]], reason="duplicate")
    from_history = {}
    for event in reversed(catalog.label_history()):
        from_history[event.product_id] = event.label
    expected = {pid: label for pid, label in from_history.items() if label is not None and pid != ids[0]}
    assert catalog.current_labels() == expected
    assert all(catalog.current_label(pid) == from_history.get(pid) for pid in ids)
    status = catalog.status()
    assert (status["labelled"], status["categories"]) == (len(expected), len(set(expected.values())))


def test_one_batch_of_labels_naming_a_product_twice_is_written_in_order(workspace):
    """A batch is written in one go: later changes in it must still see the earlier ones."""
    catalog = Catalog(workspace)
    first, second = [add(catalog, photo)[0] for photo in demo_photos("Lemon")[:2]]
    changed, conflicts = catalog.change_labels([(first, "Lime", ANY), (second, "Lemon", ANY), (first, "Lemon", "Lime"),
                                                (first, "Lemon", ANY), (second, "Orange", "Lime")], author="ana")
    assert changed == 3, "the repeated Lemon changes nothing"
    assert [(c.product_id, c.current_label, c.changed_by) for c in conflicts] == [(second, "Lemon", "ana")]
    history = [(e.product_id, e.label, e.previous_label) for e in reversed(catalog.label_history())]
    assert history == [(first, "Lime", None), (second, "Lemon", None), (first, "Lemon", "Lime")]
    assert catalog.current_labels() == {first: "Lemon", second: "Lemon"}
    assert catalog.set_labels([(first, None), (first, "Lime")], author="bo") == 2
    assert catalog.current_label(first) == "Lime" and catalog.label_history(first)[0].author == "bo"


def test_products_are_found_by_id_or_part_of_their_file_name_and_labels_read_by_id(workspace):
    catalog = Catalog(workspace)
    photos = demo_photos("Lemon")[:3]
    ids = []
    for number, (photo, name) in enumerate(zip(photos, ["Lemon_50%_off.JPG", "lemonXoff.jpg", "kiwi.jpg"])):
        data = photo.read_bytes()
        info = images.validate(data)
        ids.append(catalog.add_image(data, name, info.format, info.extension, info.width, info.height)[0])
    assert [p.id for p in catalog.find_products("LEMON")] == ids[:2]
    # % and _ are the file name's own characters, not patterns.
    assert [p.filename for p in catalog.find_products("_off")] == ["Lemon_50%_off.JPG"]
    assert [p.filename for p in catalog.find_products("50%")] == ["Lemon_50%_off.JPG"]
    assert catalog.find_products("n%o") == []
    assert catalog.find_products(str(ids[2]))[0].id == ids[2] and catalog.find_products("  ") == []
    assert len(catalog.find_products("o", limit=2)) == 2 and catalog.find_products("²") == []
    catalog.archive_products([ids[0]], reason="test")
    assert [p.id for p in catalog.find_products("lemon")] == [ids[1]]
    catalog.set_labels([(ids[1], "Lemon"), (ids[2], "Kiwi")])
    assert catalog.labels_of([ids[1], ids[0], 999]) == {ids[1]: "Lemon"}
    assert catalog.count_labelled() == 2
