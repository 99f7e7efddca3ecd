"""Back up a whole workspace into one archive, and restore it.

:func:`backup` writes a zip holding a consistent snapshot of the catalogue as a
SQLite file (SQLite's online backup, or a PostgreSQL catalogue's rows copied in
one repeatable-read transaction; people keep working meanwhile), the stored
photos and the model files. :func:`restore` unpacks such an archive into a new,
empty workspace after checking every part of it (see :func:`restore`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import zipfile
import zlib
from contextlib import closing
from pathlib import Path, PurePosixPath

from core import settings
from core.errors import CatalogError
from core.storage.atomic import atomic_path
from core.storage.catalog import _SCHEMA, DATABASE_NAME, SCHEMA_VERSION, Catalog, is_inside
from core.storage.database import SQLITE, database_url
from core.storage.images import FORMAT_EXTENSIONS

_FOLDERS = ("images", "models")


def backup(catalog: Catalog, archive: str | os.PathLike) -> Path:
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, atomic_path(archive) as temporary:
        snapshot = Path(scratch) / DATABASE_NAME
        catalog.write_sqlite_snapshot(snapshot)
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as bundle:
            bundle.write(snapshot, DATABASE_NAME, compress_type=zipfile.ZIP_DEFLATED)
            for folder in _FOLDERS:
                for path in sorted((catalog.workspace / folder).rglob("*")):
                    if path.is_file() and ".tmp" not in path.name:
                        bundle.write(path, path.relative_to(catalog.workspace).as_posix())
    return archive


def restore(archive: str | os.PathLike, workspace: str | os.PathLike, database: str | None = None) -> Catalog:
    """Unpack ``archive`` into the new, empty folder ``workspace`` and open it.

    ``database``: a PostgreSQL URL to hold the restored rows instead of the
    workspace's ``catalog.sqlite`` (the database must hold no catalogue yet); this is
    how a SQLite catalogue moves to PostgreSQL: ``backup``, then ``restore --database``.

    Nothing in the archive is trusted. Before anything lands in ``workspace`` the
    whole backup is checked in a staging folder: sizes (the restore limit and the
    free disk space; no member may inflate like a zip bomb), names (only
    ``catalog.sqlite``, ``images/`` and ``models/``), the database (SQLite's
    integrity check, exactly ProductLens's tables and indexes: no trigger, view or
    extra table; a whole-number schema version this release knows) and its rows
    (every photo path inside ``images/`` and named by the sha256 of the bytes it
    holds, every model path inside ``models/``, each present). Any failure removes
    the staging folder and is a one-line :class:`CatalogError`.
    """
    archive, workspace = Path(archive), Path(workspace)
    if workspace.exists() and not workspace.is_dir():
        raise CatalogError(f"{workspace} is a file: restore into a new, empty folder")
    if workspace.exists() and any(workspace.iterdir()):
        raise CatalogError(f"{workspace} is not empty: restore into a new workspace folder")
    try:
        bundle = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise CatalogError(f"{archive} is not a ProductLens backup ({error})") from None
    with bundle:
        members = _checked_members(bundle, archive)
        workspace.parent.mkdir(parents=True, exist_ok=True)
        _check_sizes(members, archive, workspace.parent)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=workspace.parent))
        try:
            _extract(bundle, members[DATABASE_NAME], staging / DATABASE_NAME, archive)
            expected_files = _validated_database(staging / DATABASE_NAME, archive)
            missing = expected_files - set(members)
            if missing:
                raise CatalogError(f"{archive} is incomplete: {sorted(missing)[0]} (and {len(missing) - 1} more) "
                                   "listed in the catalogue but not in the archive")
            for name, member in members.items():
                if name != DATABASE_NAME:
                    _extract(bundle, member, staging / name, archive, content_addressed=name.startswith("images/"))
            if workspace.exists():
                workspace.rmdir()
            os.replace(staging, workspace)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    restored = Catalog(workspace, database=SQLITE)  # brings an older backup's schema up to date
    if database_url(database) == SQLITE:
        return restored
    try:
        target = Catalog(workspace, database=database)
        target.copy_rows_from(restored)
    except BaseException:
        restored.close()
        shutil.rmtree(workspace, ignore_errors=True)  # it was a new, empty folder: leave nothing half-restored
        raise
    restored.close()
    # The rows now live in PostgreSQL; a stale copy beside the photos would only mislead.
    for suffix in ("", "-wal", "-shm"):
        restored.database_path.with_name(DATABASE_NAME + suffix).unlink(missing_ok=True)
    return target


# A member this much larger than its compressed size is a zip bomb, not photos (already compressed) or a catalogue.
_MAX_INFLATION = 200
_IMAGE_NAME = re.compile(r"^images/([0-9a-f]{2})/([0-9a-f]{64})(\.[a-z]{3,4})$")
_MODEL_NAME = re.compile(r"^models/[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def _checked_members(bundle: zipfile.ZipFile, archive: Path) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    image_extensions = set(FORMAT_EXTENSIONS.values())
    for member in bundle.infolist():
        name = member.filename
        if member.is_dir():
            if name.rstrip("/") in _FOLDERS or name.rstrip("/").startswith("images/"):
                continue
            raise CatalogError(f"{archive} contains {name!r}, which is not part of a workspace")
        image = _IMAGE_NAME.match(name)
        valid = (name == DATABASE_NAME or _MODEL_NAME.match(name) is not None
                 or (image is not None and image.group(2).startswith(image.group(1))
                     and image.group(3) in image_extensions))
        if not valid:
            raise CatalogError(f"{archive} contains {name!r}, which is not part of a workspace")
        if name in members:
            raise CatalogError(f"{archive} contains {name!r} twice")
        members[name] = member
    if DATABASE_NAME not in members:
        raise CatalogError(f"{archive} is not a ProductLens backup (no {DATABASE_NAME})")
    return members


def _check_sizes(members: dict[str, zipfile.ZipInfo], archive: Path, destination: Path) -> None:
    limit = settings.current().max_restore_bytes
    total = sum(member.file_size for member in members.values())
    if total > limit:
        raise CatalogError(f"{archive} unpacks to {total / 2**20:,.0f} MB, over the restore limit of "
                           f"{limit / 2**20:,.0f} MB (PRODUCTLENS_MAX_RESTORE_MB)")
    for member in members.values():
        if member.file_size > 2**20 and member.file_size > _MAX_INFLATION * max(member.compress_size, 1):
            raise CatalogError(f"{archive}: {member.filename} would inflate from {member.compress_size:,} to "
                               f"{member.file_size:,} bytes; possibly a zip bomb, not restored")
    free = shutil.disk_usage(destination).free
    if total > free:
        raise CatalogError(f"{archive} needs {total / 2**20:,.0f} MB but {destination} has {free / 2**20:,.0f} MB "
                           "free: free some space first")


def _extract(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, archive: Path,
             content_addressed: bool = False) -> None:
    """Copy one member out, never more than its declared size; a photo's bytes must hash to its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with bundle.open(member) as source, open(target, "wb") as output:
            while chunk := source.read(2**20):
                digest.update(chunk)
                output.write(chunk)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, zlib.error) as error:
        raise CatalogError(f"{archive}: {member.filename} cannot be read ({error}); the backup is damaged") from None
    if content_addressed and digest.hexdigest() != PurePosixPath(member.filename).stem:
        raise CatalogError(f"{archive}: {member.filename} does not hold the photo its name says (sha256 differs); "
                           "the backup was altered or damaged")


def _expected_schema() -> dict[tuple[str, str], str | None]:
    """``{(type, name): normalised SQL}`` of a fresh catalogue."""
    with closing(sqlite3.connect(":memory:")) as connection:
        connection.executescript(_SCHEMA)
        return {(kind, name): _normalised(sql) for kind, name, sql in
                connection.execute("SELECT type, name, sql FROM sqlite_master")}


def _normalised(sql: str | None) -> str | None:
    return None if sql is None else re.sub(r"\s+", "", sql).lower().replace("ifnotexists", "")


def _validated_database(path: Path, archive: Path) -> set[str]:
    """Check the backup's catalogue; return the file names its rows need."""
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            connection.row_factory = sqlite3.Row
            result = connection.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise CatalogError(f"{archive}: {DATABASE_NAME} is damaged ({result}); not restored")
            version = _schema_version(connection, archive)
            _check_schema(connection, archive, version)
            if connection.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise CatalogError(f"{archive}: {DATABASE_NAME} has rows pointing at products that do not exist")
            return _referenced_files(connection, archive)
    except sqlite3.DatabaseError as error:
        raise CatalogError(f"{archive}: {DATABASE_NAME} is not a readable SQLite database ({error}); "
                           "not restored") from None


def _schema_version(connection: sqlite3.Connection, archive: Path) -> int:
    try:
        value = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        version = int(value)
    except (sqlite3.DatabaseError, TypeError, ValueError):
        raise CatalogError(f"{archive}: {DATABASE_NAME} has no valid schema version; not a ProductLens "
                           "backup") from None
    if not 1 <= version <= SCHEMA_VERSION:
        raise CatalogError(f"{archive} has schema version {version}; this ProductLens reads 1 to {SCHEMA_VERSION}"
                           + (": upgrade ProductLens" if version > SCHEMA_VERSION else ""))
    return version


def _check_schema(connection: sqlite3.Connection, archive: Path, version: int) -> None:
    """Exactly ProductLens's tables and indexes (an older version may lack later tables and columns)."""
    expected = _expected_schema()
    for row in connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"):
        key = (row["type"], row["name"])
        if key not in expected:
            raise CatalogError(f"{archive}: {DATABASE_NAME} holds a {row['type']} {row['name']!r} that is not part "
                               "of a ProductLens catalogue; not restored")
        if _normalised(row["sql"]) == expected[key]:
            continue
        if row["type"] == "table" and version < SCHEMA_VERSION and _older_columns(connection, row["name"]):
            continue
        raise CatalogError(f"{archive}: {DATABASE_NAME}'s {row['type']} {row['name']!r} differs from a ProductLens "
                           "catalogue's; not restored")


def _older_columns(connection: sqlite3.Connection, table: str) -> bool:
    """Whether ``table``'s columns are the leading columns of today's table (a migration adds the rest)."""
    with closing(sqlite3.connect(":memory:")) as fresh:
        fresh.executescript(_SCHEMA)
        wanted = [tuple(row) for row in fresh.execute(f"PRAGMA table_xinfo('{table}')")]
    found = [tuple(row) for row in connection.execute(f"PRAGMA table_xinfo('{table}')")]
    return 0 < len(found) < len(wanted) and found == wanted[:len(found)]


def _referenced_files(connection: sqlite3.Connection, archive: Path) -> set[str]:
    files = set()
    for row in connection.execute("SELECT id, sha256, stored_path FROM products"):
        match = _IMAGE_NAME.match(row["stored_path"] or "")
        if match is None or match.group(2) != row["sha256"]:
            raise CatalogError(f"{archive}: product {row['id']}'s photo path {row['stored_path']!r} is not a "
                               "content-addressed file under images/; not restored")
        files.add(row["stored_path"])
    for row in connection.execute("SELECT id, path FROM model_versions"):
        if _MODEL_NAME.match(row["path"] or "") is None or not is_inside(row["path"], "models"):
            raise CatalogError(f"{archive}: model version {row['id']}'s path {row['path']!r} is not a file under "
                               "models/; not restored")
        files.add(row["path"])
    return files
