import json
import subprocess
import sys
import zipfile

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
