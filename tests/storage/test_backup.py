import json
import sqlite3
import subprocess
import sys
import zipfile
from contextlib import closing

import pytest

from conftest import REPO
from core.errors import CatalogError
from core.storage import ingest
from core.storage.backup import backup, restore
from core.storage.catalog import Catalog


def test_backup_restore_round_trip(tmp_path, demo_dir):
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir / "Lemon", demo_dir / "Banana"], label="Fruit")
    catalog.set_labels([(catalog.product_ids()[0], "Lemon")], author="ana")
    archive = backup(catalog, tmp_path / "backup.zip")
    restored = restore(archive, tmp_path / "restored")
    assert restored.current_labels() == catalog.current_labels()
    assert [e.author for e in restored.label_history()] == [e.author for e in catalog.label_history()]
    for product in catalog.products():
        assert restored.image_path(product.id).read_bytes() == catalog.image_path(product).read_bytes()


def test_restore_refuses_a_non_empty_workspace_and_foreign_archives(tmp_path, demo_dir):
    catalog = Catalog(tmp_path / "ws")
    archive = backup(catalog, tmp_path / "backup.zip")
    with pytest.raises(CatalogError, match="not empty"):
        restore(archive, tmp_path / "ws")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as bundle:
        bundle.writestr("catalog.sqlite", b"")
        bundle.writestr("../outside.txt", b"x")
    with pytest.raises(CatalogError, match="not part of a workspace"):
        restore(evil, tmp_path / "new")
    assert not (tmp_path / "outside.txt").exists()


def test_history_and_backup_from_the_command_line(tmp_path, demo_dir):
    workspace = tmp_path / "ws"
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    product = catalog.product_ids()[0]
    catalog.set_labels([(product, "Lime")], author="ana")

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "core", "--workspace", str(workspace), *args],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    history = json.loads(cli("history", "--product", str(product), "--json"))
    assert [(h["from"], h["to"], h["who"]) for h in history] == [("Lemon", "Lime", "ana"), (None, "Lemon", None)]
    assert "ana" in cli("history", "--limit", "1")
    cli("backup", str(tmp_path / "b.zip"))
    restored = json.loads(subprocess.run(
        [sys.executable, "-m", "core", "--workspace", str(tmp_path / "copy"), "restore", str(tmp_path / "b.zip")],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=True).stdout.strip().splitlines()[-1])
    assert restored["products"] == 8 and restored["labelled"] == 8


# -- hostile backups: each is refused before anything lands in the workspace --------------------------------

@pytest.fixture()
def good_backup(tmp_path, demo_dir):
    catalog = Catalog(tmp_path / "source")
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    for product in catalog.product_ids()[:3]:
        catalog.set_labels([(product, "Lime")], author="ana")
    return backup(catalog, tmp_path / "good.zip")


def _doctored(archive, tmp_path, sql=None, database=None, extra=None, drop=()):
    """A copy of ``archive`` whose catalogue ran ``sql`` (or is replaced by ``database`` bytes)."""
    scratch = tmp_path / "scratch.sqlite"
    with zipfile.ZipFile(archive) as source:
        scratch.write_bytes(source.read("catalog.sqlite"))
        members = {name: source.read(name) for name in source.namelist() if name != "catalog.sqlite"}
    if sql:
        with closing(sqlite3.connect(scratch)) as connection:  # closing checkpoints the WAL into the file
            connection.executescript(sql)
    doctored = tmp_path / "doctored.zip"
    with zipfile.ZipFile(doctored, "w", compression=zipfile.ZIP_DEFLATED) as target:
        target.writestr("catalog.sqlite", database if database is not None else scratch.read_bytes())
        for name, data in {**members, **(extra or {})}.items():
            if name not in drop:
                target.writestr(name, data)
    return doctored


def _refused(archive, tmp_path, match):
    target = tmp_path / "restored"
    with pytest.raises(CatalogError, match=match):
        restore(archive, target)
    assert not target.exists(), "nothing half-restored"
    assert not list(tmp_path.glob(".restore-*")), "staging folder removed"


def test_restore_refuses_a_catalogue_with_a_trigger(good_backup, tmp_path):
    # The attack from the issue: a trigger that wipes the append-only history at the next label change.
    evil = _doctored(good_backup, tmp_path, sql="CREATE TRIGGER wipe AFTER INSERT ON labels "
                                                "BEGIN DELETE FROM labels WHERE id < NEW.id; END;")
    _refused(evil, tmp_path, "trigger 'wipe'")


@pytest.mark.parametrize("sql, match", [
    ("CREATE VIEW everything AS SELECT * FROM products;", "view 'everything'"),
    ("CREATE TABLE stash (x);", "table 'stash'"),
    ("CREATE INDEX sneaky ON labels(author);", "index 'sneaky'"),
    ("UPDATE meta SET value = 'two' WHERE key = 'schema_version';", "no valid schema version"),
    ("UPDATE meta SET value = '99' WHERE key = 'schema_version';", "upgrade ProductLens"),
    ("UPDATE products SET stored_path = '../../../etc/passwd' WHERE id = 1;", "photo path"),
    ("UPDATE products SET stored_path = '/etc/passwd' WHERE id = 2;", "photo path"),
    ("INSERT INTO model_versions (backbone, classes, metrics, params, path, created_at) "
     "VALUES ('x', '[]', '{}', '{}', '../../outside.keras', 'now');", "not a file under models/"),
])
def test_restore_refuses_a_doctored_catalogue(good_backup, tmp_path, sql, match):
    _refused(_doctored(good_backup, tmp_path, sql=sql), tmp_path, match)


def test_restore_refuses_damaged_and_foreign_databases(good_backup, tmp_path):
    with zipfile.ZipFile(good_backup) as source:
        database = source.read("catalog.sqlite")
    _refused(_doctored(good_backup, tmp_path, database=b"this is not sqlite" * 100), tmp_path,
             "not a readable SQLite database")
    _refused(_doctored(good_backup, tmp_path, database=database[: len(database) // 2]), tmp_path,
             "not a readable SQLite database|damaged")


def test_restore_refuses_photos_that_are_not_what_their_name_says(good_backup, tmp_path):
    with zipfile.ZipFile(good_backup) as source:
        photo = next(name for name in source.namelist() if name.startswith("images/"))
    _refused(_doctored(good_backup, tmp_path, extra={photo: b"swapped"}), tmp_path, "sha256 differs")
    _refused(_doctored(good_backup, tmp_path, drop={photo}), tmp_path, "incomplete")


def test_restore_refuses_zip_bombs_and_backups_over_the_limit(good_backup, tmp_path, monkeypatch):
    bomb = _doctored(good_backup, tmp_path, extra={"models/bomb.keras": bytes(64 * 2**20)})
    assert bomb.stat().st_size < 2 * 2**20
    _refused(bomb, tmp_path, "possibly a zip bomb")
    monkeypatch.setenv("PRODUCTLENS_MAX_RESTORE_MB", "0")
    _refused(good_backup, tmp_path, "PRODUCTLENS_MAX_RESTORE_MB")


def test_restore_onto_a_file_and_a_hostile_backup_from_the_command_line_are_one_line_errors(good_backup, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    evil = _doctored(good_backup, tmp_path, sql="CREATE TRIGGER t AFTER INSERT ON labels BEGIN SELECT 1; END;")
    for workspace, archive, match in [(target, good_backup, "is a file"), (tmp_path / "new", evil, "trigger")]:
        result = subprocess.run([sys.executable, "-m", "core", "--workspace", str(workspace), "restore", str(archive)],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error:") and match in result.stderr and result.stderr.count("\n") == 1
    assert target.read_text() == "keep me"


def test_a_doctored_catalogue_already_in_a_workspace_cannot_reach_outside_it(tmp_path, demo_dir):
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir / "Lemon"])
    product = catalog.product_ids()[0]
    with catalog.transaction() as connection:
        connection.exec_driver_sql("UPDATE products SET stored_path = '../../etc/passwd' WHERE id = ?", (product,))
    with pytest.raises(CatalogError, match="outside images/"):
        catalog.image_path(product)


def test_a_postgresql_catalogue_backs_up_and_moves_between_databases(tmp_path, demo_dir, postgres_server):
    source_url, target_url = postgres_server.new_database(), postgres_server.new_database()
    try:
        catalog = Catalog(tmp_path / "ws", database=source_url)
        ingest.import_paths(catalog, [demo_dir / "Lemon", demo_dir / "Banana"], label="Fruit")
        catalog.set_labels([(catalog.product_ids()[0], "Lemon")], author="ana")
        catalog.archive_products([catalog.product_ids()[1]], reason="duplicate")
        catalog.store_embeddings("test", catalog.product_ids()[:2], [[0.5, -1.0], [2.0, 0.25]])
        archive = backup(catalog, tmp_path / "backup.zip")

        as_sqlite = restore(archive, tmp_path / "on-sqlite", database="sqlite")
        as_postgres = restore(archive, tmp_path / "on-postgres", database=target_url)
        assert as_sqlite.is_sqlite and not as_postgres.is_sqlite
        assert not (tmp_path / "on-postgres" / "catalog.sqlite").exists(), "the rows moved into PostgreSQL"
        for restored in (as_sqlite, as_postgres):
            assert restored.current_labels() == catalog.current_labels()
            assert restored.label_history() == catalog.label_history()
            assert restored.archived() == catalog.archived()
            assert [p.sha256 for p in restored.products()] == [p.sha256 for p in catalog.products()]
            assert restored.embeddings("test")[1].tolist() == catalog.embeddings("test")[1].tolist()
        # New rows continue after the copied ids.
        product = as_postgres.product_ids()[-1]
        as_postgres.set_labels([(product, "Banana")], author="bo")
        assert as_postgres.label_history(limit=1)[0].id == max(e.id for e in catalog.label_history()) + 1
        with pytest.raises(CatalogError, match="catalogue of another workspace folder"):
            restore(archive, tmp_path / "again", database=target_url)
        assert not (tmp_path / "again").exists(), "a refused restore leaves nothing behind"
    finally:
        postgres_server.drop(source_url)
        postgres_server.drop(target_url)
