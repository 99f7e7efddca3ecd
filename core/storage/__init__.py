"""Storage: everything ProductLens keeps, and how it gets in.

A workspace is one catalogue (SQLite by default, or PostgreSQL:
:func:`database_url`) plus content-addressed photo and model files
(:class:`Catalog`); photos come in through :func:`import_paths` /
:func:`import_bytes`, which validate each one (:mod:`core.storage.images`) and
report bad ones by name; every file is written through :func:`atomic_path`.
"""

from core.storage.atomic import atomic_path, atomic_write_bytes
from core.storage.backup import backup, restore
from core.storage.catalog import (
                                  ANY,
                                  LABEL_SOURCES,
                                  MAX_LABEL_LENGTH,
                                  Catalog,
                                  LabelConflict,
                                  LabelEvent,
                                  ModelVersion,
                                  Product,
)
from core.storage.database import database_url
from core.storage.demo import load_demo
from core.storage.history import history_rows
from core.storage.ingest import ImportReport, Rejected, import_bytes, import_paths
from core.storage.thumbnails import preview_data_url, preview_data_urls, thumbnail

__all__ = ["ANY", "LABEL_SOURCES", "MAX_LABEL_LENGTH", "Catalog", "ImportReport", "LabelConflict", "LabelEvent",
           "ModelVersion", "Product", "Rejected", "atomic_path", "atomic_write_bytes", "backup", "database_url",
           "history_rows",
           "import_bytes", "import_paths", "load_demo", "preview_data_url", "preview_data_urls", "restore",
           "thumbnail"]
