"""Back up a whole workspace into one archive, and restore it.

:func:`backup` writes a zip holding a consistent snapshot of ``catalog.sqlite``
(SQLite's online backup, so people can keep working meanwhile), the stored
photos and the model files. :func:`restore` unpacks such an archive into a new,
empty workspace, refusing anything that is not part of a workspace.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from core.errors import CatalogError
from core.storage.atomic import atomic_path
from core.storage.catalog import DATABASE_NAME, Catalog

_FOLDERS = ("images", "models")


def backup(catalog: Catalog, archive: str | os.PathLike) -> Path:
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, atomic_path(archive) as temporary:
        snapshot = Path(scratch) / DATABASE_NAME
        with sqlite3.connect(snapshot) as target:
            catalog.connection.backup(target)
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as bundle:
            bundle.write(snapshot, DATABASE_NAME, compress_type=zipfile.ZIP_DEFLATED)
            for folder in _FOLDERS:
                for path in sorted((catalog.workspace / folder).rglob("*")):
                    if path.is_file() and ".tmp" not in path.name:
                        bundle.write(path, path.relative_to(catalog.workspace).as_posix())
    return archive


def restore(archive: str | os.PathLike, workspace: str | os.PathLike) -> Catalog:
    archive, workspace = Path(archive), Path(workspace)
    if workspace.exists() and any(workspace.iterdir()):
        raise CatalogError(f"{workspace} is not empty: restore into a new workspace folder")
    try:
        bundle = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as error:
        raise CatalogError(f"{archive} is not a ProductLens backup ({error})") from None
    with bundle:
        names = bundle.namelist()
        if DATABASE_NAME not in names:
            raise CatalogError(f"{archive} is not a ProductLens backup (no {DATABASE_NAME})")
        for name in names:
            parts = PurePosixPath(name).parts
            if name != DATABASE_NAME and (parts[0] not in _FOLDERS or ".." in parts or name.startswith("/")):
                raise CatalogError(f"{archive} contains {name!r}, which is not part of a workspace")
        workspace.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=workspace.parent))
        try:
            bundle.extractall(staging)
            if workspace.exists():
                workspace.rmdir()
            os.replace(staging, workspace)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Catalog(workspace)
