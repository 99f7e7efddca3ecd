"""A damaged, read-only or full workspace: every command ends in one line saying what to do, nothing is lost.

Real processes on real files. Read-only and full disks are real too: a read-only bind mount and a
small tmpfs, mounted inside a user namespace (``unshare``), so root's permission bypass does not
hide the failure and nothing outside the test is touched.
"""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from core.errors import CatalogError
from core.storage import Catalog, ingest

COMMANDS = [["status"], ["history"], ["backup", "{tmp}/backup.zip"], ["import", "{demo}/Banana", "--quiet"],
            ["label", "1", "Lime"], ["users", "list"]]


def _cli(workspace, *args):
    return subprocess.run([sys.executable, "-m", "core", "--workspace", str(workspace), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def _one_line_error(result, *phrases):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert all(phrase in result.stderr for phrase in phrases), result.stderr


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def workspace(tmp_path, demo_dir):
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    catalog.close()
    return tmp_path / "ws"


@pytest.mark.parametrize("damage, phrase", [
    ("corrupt", "is damaged"), ("truncated", "is damaged"), ("zero bytes", "is empty (0 bytes)")])
def test_a_damaged_catalogue_is_one_line_for_every_command_and_is_left_as_it_is(workspace, tmp_path, demo_dir,
                                                                               damage, phrase):
    database = workspace / "catalog.sqlite"
    data = database.read_bytes()
    database.write_bytes({"corrupt": b"\0garbage" * 64 + data[512:], "truncated": data[:len(data) // 3],
                          "zero bytes": b""}[damage])
    before = _digest(database)
    for command in COMMANDS:
        args = [part.format(tmp=tmp_path, demo=demo_dir) for part in command]
        _one_line_error(_cli(workspace, *args), phrase, "restore")
    assert _digest(database) == before, "a damaged catalogue is never replaced by a new, empty one"
    with pytest.raises(CatalogError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        Catalog(workspace)


def test_reading_commands_write_nothing(workspace, tmp_path):
    database = workspace / "catalog.sqlite"
    before = _digest(database)
    for args in (["status", "--json"], ["history", "--json"], ["backup", str(tmp_path / "b.zip")],
                 ["users", "list"], ["versions"]):
        assert _cli(workspace, *args).returncode == 0
    assert _digest(database) == before


def _in_namespace(script):
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's `unshare` is needed for the read-only and full-disk tests")
    result = subprocess.run(["unshare", "-rm", "sh", "-ec", script], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert "MOUNTED" in result.stdout, f"could not mount in a user namespace: {result.stderr}"
    return result


def test_a_read_only_workspace_reads_and_refuses_changes_in_one_line(workspace, tmp_path, demo_dir):
    before = _digest(workspace / "catalog.sqlite")
    python, core = sys.executable, f"{sys.executable} -m core --workspace {workspace}"
    script = (f"mount --bind {workspace} {workspace}; mount -o remount,bind,ro {workspace}; echo MOUNTED; "
              f"{core} status --json; {core} history --json --limit 1; {core} backup {tmp_path}/ro.zip; "
              f"for c in 'import {demo_dir}/Banana --quiet' 'label 1 Lime'; do "
              f"  {core} $c 2>&1 >/dev/null | sed 's/^/REFUSED /' || true; done; {python} -c pass")
    result = _in_namespace(script)
    lines = result.stdout.splitlines()
    status = json.loads(next(line for line in lines if line.startswith('{"workspace"')))
    assert status["products"] == 8 and status["labelled"] == 8
    assert (tmp_path / "ro.zip").stat().st_size > 0, "a backup of a read-only workspace works"
    refused = [line for line in lines if line.startswith("REFUSED ")]
    assert len(refused) == 2 and all("is read-only" in line and "Traceback" not in line for line in refused), lines
    assert _digest(workspace / "catalog.sqlite") == before


def test_an_import_that_fills_the_disk_stops_in_one_line_and_keeps_what_it_stored_labelled(tmp_path, demo_dir):
    small = tmp_path / "small-disk"
    small.mkdir()
    core = f"{sys.executable} -m core --workspace {small}/ws"
    script = (f"mount -t tmpfs -o size=1200k tmpfs {small}; echo MOUNTED; "
              f"{core} import {demo_dir} --quiet 2>&1 | sed 's/^/IMPORT /' || true; {core} status --json")
    result = _in_namespace(script)
    lines = result.stdout.splitlines()
    imported = [line[len("IMPORT "):] for line in lines if line.startswith("IMPORT ")]
    assert len(imported) == 1 and imported[0].startswith("error: import stopped at"), lines
    assert "is full" in imported[0] and "each with its label" in imported[0]
    status = json.loads(lines[-1])
    assert 0 < status["products"] < 80, "the disk filled part-way"
    assert status["labelled"] == status["products"], "every stored product kept its folder's label"
