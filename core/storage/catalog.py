"""The product catalogue: rows in SQLite (default) or PostgreSQL, plus content-addressed image files.

A *workspace* directory holds ``catalog.sqlite`` (unless the rows live in
PostgreSQL, see :mod:`core.storage.database`), ``images/`` (each photo stored
once under its sha256, so uploading the same photo twice gives one product),
``models/`` (head versions) and ``exports/``. Notation used across ``core``:
a *product* is one stored photo (``product_id``); its *label* is the category a
person or an import gave it, kept as an append-only history whose latest entry is
the current label (``None`` = unlabelled); a *prediction* is the top-k output of
one model version; an *embedding* is the backbone's pooled feature vector, stored
as float16 per (product, embedding key: the backbone and every setting that changes
its features, see :attr:`core.features.Embedder.key`). The tables' column is still
called ``backbone`` so that existing workspaces open unchanged.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
import uuid
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import Column, Integer, MetaData, Table, Text, bindparam, insert, text

from core import settings
from core.errors import CatalogError, InvalidInputError, NotFoundError
from core.storage import database as _database
from core.storage.atomic import atomic_write_bytes

SCHEMA_VERSION = 7
_CURRENT_LABELS_TABLE = """CREATE TABLE IF NOT EXISTS current_labels (
    product_id INTEGER PRIMARY KEY REFERENCES products(id),
    label TEXT,
    source TEXT NOT NULL,
    event_id INTEGER NOT NULL
)"""
# Statements that take a workspace from version N-1 to N; run in order, in one transaction.
# (Tables added by a version need no statement: the schema below creates what is missing.)
_MIGRATIONS = {
    2: ["ALTER TABLE labels ADD COLUMN action TEXT"],  # undo groups label events by action
    3: [],  # accounts (users table)
    4: ["ALTER TABLE predictions ADD COLUMN new_category INTEGER"],  # "new category?" flag (core.model.novelty)
    5: [],  # category tree (category_parents)
    # Each product's latest label kept beside the history, so no read aggregates the whole history.
    6: [_CURRENT_LABELS_TABLE,
        "INSERT INTO current_labels (product_id, label, source, event_id) "
        "SELECT l.product_id, l.label, l.source, l.id FROM labels l "
        "JOIN (SELECT product_id, MAX(id) AS id FROM labels GROUP BY product_id) latest ON latest.id = l.id"],
    # Each prediction's margin and entropy beside it, so the database can sort a million by them.
    7: ["ALTER TABLE predictions ADD COLUMN margin REAL", "ALTER TABLE predictions ADD COLUMN entropy REAL",
        lambda catalog: catalog._store_uncertainty()],
}
ROLES = ("viewer", "labeller", "admin")
LABEL_SOURCES = ("human", "import", "model-accepted")
DATABASE_NAME = "catalog.sqlite"
CATALOGUE_ID_FILE = "catalogue-id"  # beside the photos of a PostgreSQL catalogue
MAX_LABEL_LENGTH = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    source TEXT,
    stored_path TEXT NOT NULL,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    product_id INTEGER NOT NULL REFERENCES products(id),
    label TEXT,
    previous_label TEXT,
    source TEXT NOT NULL CHECK (source IN ('human', 'import', 'model-accepted')),
    author TEXT,
    created_at TEXT NOT NULL,
    action TEXT
);
CREATE INDEX IF NOT EXISTS labels_by_product ON labels(product_id, id);
""" + _CURRENT_LABELS_TABLE + """;
CREATE INDEX IF NOT EXISTS current_labels_by_label ON current_labels(label);
CREATE TABLE IF NOT EXISTS embeddings (
    product_id INTEGER NOT NULL REFERENCES products(id),
    backbone TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (product_id, backbone)
);
CREATE TABLE IF NOT EXISTS model_versions (
    id INTEGER PRIMARY KEY,
    backbone TEXT NOT NULL,
    classes TEXT NOT NULL,
    metrics TEXT NOT NULL,
    params TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS predictions (
    product_id INTEGER NOT NULL REFERENCES products(id),
    model_id INTEGER NOT NULL REFERENCES model_versions(id),
    top_label TEXT NOT NULL,
    confidence REAL NOT NULL,
    labels TEXT NOT NULL,
    probabilities TEXT NOT NULL,
    created_at TEXT NOT NULL,
    new_category INTEGER,
    margin REAL,
    entropy REAL,
    PRIMARY KEY (product_id, model_id)
);
CREATE INDEX IF NOT EXISTS predictions_by_model ON predictions(model_id, confidence);
CREATE TABLE IF NOT EXISTS label_verdicts (
    product_id INTEGER PRIMARY KEY REFERENCES products(id),
    label TEXT NOT NULL,
    author TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS archived (
    product_id INTEGER PRIMARY KEY REFERENCES products(id),
    kept_product_id INTEGER REFERENCES products(id),
    reason TEXT NOT NULL,
    author TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS category_parents (
    category TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    author TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'labeller', 'admin')),
    created_at TEXT NOT NULL
);
"""
# Archived products (e.g. the extra copies of a near-duplicate group) keep their
# rows, photos and history but leave every listing, count and training set.
_LIVE = "NOT IN (SELECT product_id FROM archived)"

# Ranks every product: predicted before unpredicted, unlabelled before labelled, then {score} (ties by id).
_UNCERTAINTY_SORT = ("CASE WHEN pr.product_id IS NULL THEN 1 ELSE 0 END, "
                     "CASE WHEN cl.label IS NULL THEN 0 ELSE 1 END, {score}, p.id")
# Multiplicative hashing (Knuth): a fixed shuffle of the ids that both databases compute in 64-bit integers.
RANDOM_MULTIPLIER, RANDOM_MODULUS = 2654435761, 2**32
# The sorts of the review table the database does (see Catalog.review_ids); ties go by product id.
REVIEW_SORTS = {
    "id": "p.id",
    "smallest margin": _UNCERTAINTY_SORT.format(score="pr.margin"),
    "highest entropy": _UNCERTAINTY_SORT.format(score="pr.entropy DESC"),
    "random": f"(p.id * {RANDOM_MULTIPLIER}) % {RANDOM_MODULUS}, p.id",
    # Products without a prediction come last: there is nothing to check.
    "least confident": "CASE WHEN pr.confidence IS NULL THEN 1 ELSE 0 END, pr.confidence, p.id",
    "newest": "p.added_at DESC, p.id DESC",
    "category": "COALESCE(cl.label, pr.top_label, ''){collate}, p.id",
}


@dataclass(frozen=True)
class ReviewFilter:
    """Which products a review view keeps, as the database applies it (nothing set: every live product).

    ``predicted``: these top categories only; ``confidence_range``: the prediction's confidence within
    it (inclusive); ``labelled``: True / False for labelled / unlabelled only; ``disagreements_only``:
    a label that differs from the prediction; ``new_category_only``: flagged "new category?";
    ``named``: the label or the prediction is one of these names (the category tree's any-level filter
    passes every category under the chosen ones).
    """

    predicted: frozenset[str] = frozenset()
    confidence_range: tuple[float, float] = (0.0, 1.0)
    labelled: bool | None = None
    disagreements_only: bool = False
    new_category_only: bool = False
    named: frozenset[str] | None = None

    @property
    def keeps_everything(self) -> bool:
        return self == ReviewFilter()

_CURRENT_LABELS = f"SELECT product_id, label, source FROM current_labels WHERE label IS NOT NULL AND product_id {_LIVE}"


def _uncertainty(probabilities: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Each stored prediction's margin (its top two probabilities apart) and entropy, computed as the
    review orders rank a table in memory (:func:`core.curation.active_learning.uncertainty`), so the
    database sorts by exactly the same numbers."""
    from core.curation.active_learning import padded, uncertainty  # numpy only; the storage layer needs no more

    matrix = padded(probabilities)
    return (-uncertainty(matrix, "margin")).tolist(), uncertainty(matrix, "entropy").tolist()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Product:
    id: int
    sha256: str
    filename: str
    source: str | None
    stored_path: str
    format: str
    width: int
    height: int
    size_bytes: int
    added_at: str


@dataclass(frozen=True)
class LabelEvent:
    id: int
    product_id: int
    label: str | None
    previous_label: str | None
    source: str
    author: str | None
    created_at: str
    action: str | None = None


@dataclass(frozen=True)
class ModelVersion:
    """One trained head: what it was trained on, how well it did, and where its file is.

    ``embedding_key`` names the photo vectors it was trained on (see
    :attr:`core.features.Embedder.key`); ``prediction_key`` the vectors it predicts
    from (the photo averaged with its crop views, or the photo alone).
    """

    id: int
    embedding_key: str
    classes: list[str]
    metrics: dict
    params: dict
    path: str
    created_at: str
    is_active: bool

    @property
    def prediction_key(self) -> str:
        return self.params.get("prediction_key") or self.embedding_key

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")


class _Any:
    def __repr__(self):
        return "ANY"


ANY = _Any()  # "no optimistic check" marker for Catalog.change_labels


@dataclass(frozen=True)
class LabelConflict:
    """A change not applied because someone else changed the label first."""

    product_id: int
    seen_label: str | None
    current_label: str | None
    wanted_label: str | None
    changed_by: str | None

    def message(self) -> str:
        who = self.changed_by or "someone else"
        return (f"product {self.product_id}: {who} changed it to {self.current_label or '(none)'} after you saw "
                f"{self.seen_label or '(none)'}; your change to {self.wanted_label or '(none)'} was not applied")


def image_file_path(sha256: str, extension: str) -> Path:
    """Where a photo's bytes live inside a workspace: content-addressed by their SHA-256."""
    # Both come from a worker's report in a Ray import: never let them name a path outside images/.
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not re.fullmatch(r"\.[a-z0-9]{1,5}", extension):
        raise ValueError(f"not a SHA-256 and extension: {sha256!r}, {extension!r}")
    return Path("images") / sha256[:2] / f"{sha256}{extension}"


def write_image_file(workspace: Path, data: bytes, sha256: str, extension: str) -> Path:
    """Write a photo's bytes to their content address in ``workspace`` (once: the same bytes are never
    written twice); the path relative to the workspace."""
    relative = image_file_path(sha256, extension)
    target = Path(workspace) / relative
    if not target.exists():
        atomic_write_bytes(target, data)
    return relative


class Catalog:
    """A workspace's catalogue. Safe to share between threads (one connection each).

    ``create=True`` (the app, ``import``) makes the workspace if needed and tidies
    it; ``create=False`` (every command that only reads) opens an existing one and
    writes nothing until asked to, so ``status``, ``history`` and ``backup`` work
    on a read-only or full disk. A damaged, truncated or foreign ``catalog.sqlite``
    is a :class:`CatalogError` saying what to do, never a half-opened catalogue.

    ``database``: ``"sqlite"`` (the workspace's ``catalog.sqlite``) or a PostgreSQL
    URL; by default ``$PRODUCTLENS_DATABASE``, else SQLite (see
    :mod:`core.storage.database`). Photos and models are files in the workspace
    either way.
    """

    def __init__(self, workspace: str | os.PathLike | None = None, create: bool = True,
                 database: str | None = None):
        self.workspace = settings.workspace_dir(workspace).resolve()
        self.database_path = self.workspace / DATABASE_NAME
        self.database_url = _database.database_url(database)
        self.is_sqlite = self.database_url == _database.SQLITE
        if self.workspace.exists() and not self.workspace.is_dir():
            raise CatalogError(f"workspace {self.workspace} exists and is not a directory")
        if self.is_sqlite:
            if not self.database_path.exists() and not create:
                raise CatalogError(f"no catalogue in {self.workspace}: run `python -m core import PATH` first")
            if (self.database_path.exists() and self.database_path.stat().st_size == 0
                    and _holds_data(self.workspace)):
                # An empty file beside photos and models is a lost catalogue, not a new one.
                raise CatalogError(f"{self.database_path} is empty (0 bytes) but the workspace holds photos or "
                                   "models: restore it from a backup (`python -m core restore`) instead of "
                                   "starting over")
        self._local = threading.local()
        self._read_only = self.is_sqlite and not create and not (os.access(self.database_path, os.W_OK)
                                                                 and os.access(self.workspace, os.W_OK))
        self._engine = _database.open_engine(self.database_url, self.database_path, self._read_only)
        with self._translated_errors():
            if create:
                for sub in ("images", "models", "exports"):
                    (self.workspace / sub).mkdir(parents=True, exist_ok=True)
            self._initialise(create)
            if not self.is_sqlite:
                self._check_workspace_folder(create)
            if create:
                self.discard_partial_files()

    @property
    def database_name(self) -> str:
        """Where the rows are, for messages: the SQLite file, or the PostgreSQL URL without its password."""
        return str(self.database_path) if self.is_sqlite else _database.display_url(self.database_url)

    # -- connection handling -------------------------------------------------
    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._engine.connect()
            self._local.connection = connection
            self._local.depth = 0
        return connection

    def _in_transaction(self) -> bool:
        return bool(getattr(self._local, "depth", 0))

    def _execute(self, sql: str, parameters: dict | list | None = None):
        """Run one statement inside :meth:`transaction` (a write); returns SQLAlchemy's result."""
        if not self._in_transaction():
            raise RuntimeError("writes run inside Catalog.transaction()")
        return self._connection().execute(_statement(sql), parameters or {})

    def _rows(self, sql: str, parameters: dict | None = None, mappings: bool = True) -> list:
        """All rows of a query (dict-like with ``mappings``, else tuples); outside a transaction it reads
        the latest committed data and holds nothing afterwards."""
        connection = self._connection()
        with self._translated_errors():
            try:
                result = connection.execute(_statement(sql), parameters or {})
                rows = result.mappings().all() if mappings else result.all()
            finally:
                if not self._in_transaction():
                    connection.rollback()  # ends SQLAlchemy's implicit transaction: no snapshot is kept
        return rows

    def _fetched(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        """A query's rows as the driver's tuples (no SQLAlchemy row objects: a streamed training reads a
        third of a million vectors), read like :meth:`_rows`."""
        connection = self._connection()
        with self._translated_errors():
            try:
                return connection.execute(_statement(sql), parameters or {}).cursor.fetchall()
            finally:
                if not self._in_transaction():
                    connection.rollback()

    def _ids(self, sql: str, parameters: dict | None = None) -> list[int]:
        """The first column of a query's rows as ints, read from the driver's cursor: SQLAlchemy's row
        objects cost more than the query itself for the million ids of a large catalogue."""
        rows = self._fetched(sql, parameters)
        return np.fromiter((row[0] for row in rows), np.int64, len(rows)).tolist()

    def _row(self, sql: str, parameters: dict | None = None):
        rows = self._rows(sql, parameters)
        return rows[0] if rows else None

    def _value(self, sql: str, parameters: dict | None = None):
        rows = self._rows(sql, parameters, mappings=False)
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator:
        """One write transaction that queues behind other writers (SQLite ``BEGIN IMMEDIATE``, a
        PostgreSQL advisory lock); yields the SQLAlchemy connection.

        A write the disk or server refuses (read-only, full, damaged, gone) is a
        one-line :class:`CatalogError`; the transaction is rolled back, so nothing
        is half-written. Nested use joins the outer transaction.
        """
        connection = self._connection()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield connection
            finally:
                self._local.depth -= 1
            return
        with self._translated_errors():
            if connection.in_transaction():
                connection.rollback()
            connection.info["write"] = True
            self._local.depth = 1
            try:
                with connection.begin():
                    yield connection
            finally:
                self._local.depth = 0
                connection.info["write"] = False

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        with _translated_errors(self.database_path, None if self.is_sqlite else self.database_name):
            yield

    def _initialise(self, create: bool) -> None:
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise CatalogError(
                f"workspace {self.workspace} was written by a newer ProductLens (schema "
                f"{version}, this version knows {SCHEMA_VERSION}): upgrade ProductLens"
            )
        if version == SCHEMA_VERSION:
            if create and self.is_sqlite and self._value("PRAGMA journal_mode") != "wal":
                self._value("PRAGMA journal_mode=WAL")
            return  # up to date: opening writes nothing
        if version is None and not create:
            raise CatalogError(f"{self.database_name} is not a ProductLens catalogue (no schema version): "
                               "restore it from a backup or choose another --workspace")
        if self._read_only:
            raise CatalogError(f"{self.database_path} needs upgrading (schema {version} to {SCHEMA_VERSION}) "
                               "but is read-only: open it once with write access")
        if self.is_sqlite:
            self._value("PRAGMA journal_mode=WAL")
            if version is not None:
                # Keep the pre-migration database: an upgrade must never cost a label.
                self._value("PRAGMA wal_checkpoint(TRUNCATE)")
                backup = self.database_path.with_name(f"{DATABASE_NAME}.schema{version}.bak")
                with closing(sqlite3.connect(backup)) as target:
                    self._connection().connection.driver_connection.backup(target)
        # (PostgreSQL runs DDL in the transaction: a failed upgrade leaves the old schema untouched.)
        with self.transaction():
            dialect = _database.SQLITE if self.is_sqlite else "postgresql"
            if version is not None:
                for target_version in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target_version]:
                        if callable(statement):
                            statement(self)
                        else:
                            self._execute(_database.schema_for(dialect, statement))
            for statement in _database.schema_for(dialect, _SCHEMA).split(";"):
                if statement.strip():
                    self._execute(statement)
            self._execute("INSERT INTO meta VALUES ('schema_version', :version) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", {"version": str(SCHEMA_VERSION)})

    def _check_workspace_folder(self, create: bool) -> None:
        """A PostgreSQL catalogue is used with one workspace folder, the one holding its photos.

        The database and the folder each keep the catalogue's id: a server or command
        pointed at the right database but another folder (a colleague's default
        ``./workspace``) would otherwise store photos where nobody else finds them.
        """
        marker = self.workspace / CATALOGUE_ID_FILE
        folder_id = marker.read_text().strip() if marker.is_file() else None
        database_id = self._value("SELECT value FROM meta WHERE key = 'catalogue_id'")
        if database_id is not None and folder_id == database_id:
            return
        if database_id is not None and (folder_id is not None or self._value("SELECT COUNT(*) FROM products")):
            raise CatalogError(f"{self.database_name} is the catalogue of another workspace folder (its photos are "
                               f"not in {self.workspace}): use the folder that holds them, shared by every server "
                               "and command using this database")
        if not create or self._read_only:
            return
        with self.transaction():
            database_id = self._value("SELECT value FROM meta WHERE key = 'catalogue_id'") or folder_id \
                or uuid.uuid4().hex
            self._execute("INSERT INTO meta VALUES ('catalogue_id', :id) ON CONFLICT (key) DO NOTHING",
                          {"id": database_id})
        atomic_write_bytes(marker, database_id.encode())

    def schema_version(self) -> int | None:
        """The workspace's schema version, None for a new workspace."""
        if self.is_sqlite:
            exists = self._value("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
        else:
            exists = self._value("SELECT 1 FROM information_schema.tables "
                                 "WHERE table_schema = current_schema() AND table_name = 'meta'")
        if exists is None:
            return None
        value = self._value("SELECT value FROM meta WHERE key = 'schema_version'")
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CatalogError(f"{self.database_name} has an invalid schema version ({value!r}): "
                               "restore it from a backup") from None

    def discard_partial_files(self, max_age_seconds: float = 600.0) -> int:
        """Delete temporary files left by a process killed mid-write; return how many.

        Every file is written to a ``.tmp`` name and renamed, so a leftover
        temporary file is never referenced. Young ones may belong to a writer that
        is still running and are kept.
        """
        import time

        removed = 0
        for folder in ("images", "models", "exports", "cache", "thumbnails"):
            for path in (self.workspace / folder).rglob("*.tmp*"):
                try:
                    if time.time() - path.stat().st_mtime >= max_age_seconds:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def integrity_ok(self) -> bool:
        """SQLite's integrity check (PostgreSQL checks its own pages: always True there)."""
        return not self.is_sqlite or self._value("PRAGMA integrity_check") == "ok"

    def write_sqlite_snapshot(self, path: str | os.PathLike) -> None:
        """A consistent copy of every row as a SQLite catalogue file at ``path`` (what a backup holds).

        SQLite: its online backup, so people can keep working meanwhile; PostgreSQL:
        the rows of one repeatable-read transaction copied into a new file.
        """
        path = Path(path)
        if self.is_sqlite:
            with self._translated_errors(), closing(sqlite3.connect(path)) as target:
                self._connection().connection.driver_connection.backup(target)
            return
        import tempfile

        with tempfile.TemporaryDirectory(prefix="productlens-snapshot-") as scratch:
            snapshot = Catalog(scratch, database=_database.SQLITE)
            snapshot.copy_rows_from(self)
            with closing(sqlite3.connect(snapshot.database_path)) as source, closing(sqlite3.connect(path)) as target:
                source.backup(target)
            snapshot.close()

    def copy_rows_from(self, source: "Catalog", chunk_size: int = 1000) -> None:
        """Copy every row of ``source`` into this empty catalogue, ids included.

        Moves a catalogue between SQLite and PostgreSQL (``restore --database``, and
        backups of a PostgreSQL catalogue); photos and models are files and do not move.
        """
        if self._value("SELECT COUNT(*) FROM products") or self._value("SELECT COUNT(*) FROM model_versions") \
                or self.has_accounts():
            raise CatalogError(f"{self.database_name} already holds a catalogue: copy into an empty database")
        options = {} if source.is_sqlite else {"isolation_level": "REPEATABLE READ"}  # one consistent snapshot
        with source._translated_errors(), source._engine.connect().execution_options(**options) as reader:
            with reader.begin(), self.transaction() as writer:
                _database.copy_rows(reader, writer, chunk_size)

    # -- products --------------------------------------------------------------
    def image_path(self, product: Product | int) -> Path:
        """Where the product's photo is; only ever a file under ``images/`` (a doctored row cannot point out)."""
        if isinstance(product, int):
            product = self.get_product(product)
        return self._inside(product.stored_path, "images")

    def model_path(self, version: "ModelVersion") -> Path:
        """The model version's file, under ``models/``; a missing file is a one-line error saying what to do."""
        path = self._inside(version.path, "models")
        if not path.is_file():
            raise NotFoundError(f"model version {version.id}'s file {version.path} is missing: activate another "
                                "version (`python -m core versions --activate N`) or retrain")
        return path

    def _inside(self, relative: str, folder: str) -> Path:
        path = self.workspace / relative
        if not is_inside(relative, folder) or not path.resolve().is_relative_to(self.workspace / folder):
            raise CatalogError(f"catalogue entry {relative!r} points outside {folder}/: refusing to use it")
        return path

    def add_image(self, data: bytes, filename: str, image_format: str, extension: str,
                  width: int, height: int, source: str | None = None, label: str | None = None,
                  action: str | None = None) -> tuple[int, bool]:
        """Store a validated photo; return ``(product_id, created)``.

        ``created`` is False when the same bytes are already a product. A new
        product's import ``label`` is written in the same transaction as the
        product, so an import stopped at any point (a full disk, a kill) leaves
        every stored product with its label.
        """
        label = clean_label(label)
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self._value("SELECT id FROM products WHERE sha256 = :sha256", {"sha256": sha256})
        if existing is not None:
            # Uploading an archived photo again is a deliberate "I want it back".
            with self.transaction():
                self._execute("DELETE FROM archived WHERE product_id = :id", {"id": int(existing)})
            return int(existing), False
        # File first, row second: a crash in between leaves an unreferenced file,
        # never a row that points at nothing.
        with self._translated_errors():  # a full or read-only disk: one line, batch stops
            write_image_file(self.workspace, data, sha256, extension)
        return self.register_image(sha256, filename, image_format, extension, width, height, len(data),
                                   source, label, action)

    def register_image(self, sha256: str, filename: str, image_format: str, extension: str, width: int,
                       height: int, size_bytes: int, source: str | None = None, label: str | None = None,
                       action: str | None = None) -> tuple[int, bool]:
        """The row half of :meth:`add_image`, for a photo whose file :func:`write_image_file` already wrote
        (by a Ray worker, say); ``(product_id, created)``, an archived product brought back as there."""
        label = clean_label(label)
        with self.transaction():
            existing = self._value("SELECT id FROM products WHERE sha256 = :sha256", {"sha256": sha256})
            if existing is not None:
                self._execute("DELETE FROM archived WHERE product_id = :id", {"id": int(existing)})
                return int(existing), False
            product_id = int(self._execute(
                "INSERT INTO products (sha256, filename, source, stored_path, format, width, height, size_bytes, "
                "added_at) VALUES (:sha256, :filename, :source, :stored_path, :format, :width, :height, :size, "
                ":added_at) RETURNING id",
                {"sha256": sha256, "filename": filename, "source": source,
                 "stored_path": image_file_path(sha256, extension).as_posix(),
                 "format": image_format, "width": width, "height": height, "size": int(size_bytes),
                 "added_at": utc_now()}).scalar_one())
            if label is not None:
                self._append_label(product_id, label, None, "import", None, utc_now(), action)
            return product_id, True

    def get_product(self, product_id: int) -> Product:
        row = self._row("SELECT * FROM products WHERE id = :id", {"id": int(product_id)})
        if row is None:
            raise NotFoundError(f"no product with id {product_id}")
        return Product(**row)

    def products(self, product_ids: Sequence[int] | None = None) -> list[Product]:
        if product_ids is None:
            rows = self._rows(f"SELECT * FROM products WHERE id {_LIVE} ORDER BY id")
        else:
            rows = []
            ids = [int(i) for i in product_ids]
            for start in range(0, len(ids), 500):
                rows += self._rows("SELECT * FROM products WHERE id IN :ids", {"ids": ids[start:start + 500]})
            order = {pid: i for i, pid in enumerate(ids)}
            rows.sort(key=lambda row: order[row["id"]])
        return [Product(**row) for row in rows]

    def product_ids(self) -> list[int]:
        return self._ids(f"SELECT id FROM products WHERE id {_LIVE} ORDER BY id")

    def count_products(self) -> int:
        return int(self._value(f"SELECT COUNT(*) FROM products WHERE id {_LIVE}"))

    def archive_products(self, product_ids: Sequence[int], reason: str, kept_product_id: int | None = None,
                         author: str | None = None) -> int:
        """Take products out of the catalogue without deleting anything; return how many."""
        now = utc_now()
        rows = [{"id": int(pid), "kept": kept_product_id, "reason": reason, "author": author, "now": now}
                for pid in product_ids]
        if not rows:
            return 0
        with self.transaction():
            before = int(self._value("SELECT COUNT(*) FROM archived"))
            self._execute("INSERT INTO archived (product_id, kept_product_id, reason, author, created_at) "
                          "VALUES (:id, :kept, :reason, :author, :now) ON CONFLICT (product_id) DO NOTHING", rows)
            return int(self._value("SELECT COUNT(*) FROM archived")) - before

    def restore_products(self, product_ids: Sequence[int]) -> int:
        ids = sorted({int(pid) for pid in product_ids})
        restored = 0
        with self.transaction():
            for start in range(0, len(ids), 500):
                restored += self._execute("DELETE FROM archived WHERE product_id IN :ids",
                                          {"ids": ids[start:start + 500]}).rowcount
        return restored

    def archived_product_ids(self) -> list[int]:
        return [int(row[0]) for row in self._rows("SELECT product_id FROM archived", mappings=False)]

    def labelled_product_ids(self) -> list[int]:
        """Ids of the live products that have a label, without reading the labels."""
        return self._ids(f"SELECT product_id FROM current_labels WHERE label IS NOT NULL AND product_id {_LIVE}")

    def count_labelled(self) -> int:
        return int(self._value(f"SELECT COUNT(*) FROM current_labels WHERE label IS NOT NULL AND product_id {_LIVE}"))

    def find_products(self, text: str, limit: int = 20) -> list[Product]:
        """Live products whose id is ``text`` or whose file name contains it (any case): the id first,
        then by id, at most ``limit``. A picker for catalogues too big to list."""
        text = str(text).strip()
        if not text:
            return []
        escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        exact = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else -1
        rows = self._rows(f"SELECT * FROM products WHERE id {_LIVE} AND (id = :id OR LOWER(filename) LIKE :pattern "
                          "ESCAPE '\\') ORDER BY CASE WHEN id = :id THEN 0 ELSE 1 END, id LIMIT :limit",
                          {"id": exact, "pattern": f"%{escaped}%", "limit": int(limit)})
        return [Product(**row) for row in rows]

    def archived(self) -> list[dict]:
        return [dict(row) for row in self._rows("SELECT * FROM archived ORDER BY created_at, product_id")]

    # -- label verdicts ------------------------------------------------------------
    def set_label_verdicts(self, product_ids: Sequence[int], author: str | None = None,
                           seen: dict[int, str | None] | None = None) -> int:
        """Remember that a person checked each product's current label and found it right; return how many.

        With ``seen`` (product id → the label the person looked at), a product whose
        label changed since is left out: nobody vouches for a label they never saw.
        """
        with self.transaction():
            rows = []
            for pid in product_ids:
                label = self.current_label(int(pid))
                if label is None or (seen is not None and seen.get(int(pid), label) != label):
                    continue
                rows.append({"id": int(pid), "label": label, "author": author, "now": utc_now()})
            if rows:
                self._execute("INSERT INTO label_verdicts VALUES (:id, :label, :author, :now) "
                              "ON CONFLICT (product_id) DO UPDATE SET label = excluded.label, "
                              "author = excluded.author, created_at = excluded.created_at", rows)
        return len(rows)

    def label_verdicts(self) -> dict[int, str]:
        """``{product_id: label a person confirmed}``."""
        return {int(row[0]): row[1] for row in self._rows("SELECT product_id, label FROM label_verdicts",
                                                          mappings=False)}

    # -- labels ----------------------------------------------------------------
    def current_labels_with_source(self) -> dict[int, tuple[str, str]]:
        """``{product_id: (label, source)}`` for every labelled product."""
        rows = self._rows(_CURRENT_LABELS, mappings=False)
        return {int(pid): (label, source) for pid, label, source in rows if label is not None}

    def current_labels(self) -> dict[int, str]:
        """``{product_id: label}`` for every product whose latest label is not cleared."""
        return {pid: label for pid, (label, _source) in self.current_labels_with_source().items()}

    def labels_of(self, product_ids: Sequence[int]) -> dict[int, str]:
        """``{product_id: label}`` for those of ``product_ids`` that are labelled (read by id, not whole)."""
        ids, labels = sorted({int(pid) for pid in product_ids}), {}
        for start in range(0, len(ids), 500):
            rows = self._fetched("SELECT product_id, label FROM current_labels WHERE label IS NOT NULL "
                                 "AND product_id IN :ids", {"ids": ids[start:start + 500]})
            labels.update((int(pid), label) for pid, label in rows)
        return labels

    def current_label(self, product_id: int) -> str | None:
        return self._value("SELECT label FROM current_labels WHERE product_id = :id", {"id": int(product_id)})

    def set_labels(self, assignments: Iterable[tuple[int, str | None]], source: str = "human",
                   author: str | None = None, only_if_unlabelled: bool = False, action: str | None = None) -> int:
        """Append label events; return how many labels changed.

        A label equal to the current one is not recorded again. With
        ``only_if_unlabelled`` products that already have a label keep it (used by
        imports so a re-import never overrides a person's correction). All events
        of one call share an ``action`` id, which is what undo reverts.
        """
        return self.change_labels(((pid, label, ANY) for pid, label in assignments), source, author,
                                  only_if_unlabelled=only_if_unlabelled, action=action)[0]

    def change_labels(self, changes: Iterable[tuple[int, str | None, object]], source: str = "human",
                      author: str | None = None, only_if_unlabelled: bool = False, action: str | None = None
                      ) -> tuple[int, list["LabelConflict"]]:
        """Like :meth:`set_labels` with an optimistic check per product.

        ``changes`` are ``(product_id, new_label, seen_label)``; ``seen_label`` is
        what the person was looking at (:data:`ANY` to skip the check). If the
        product's label changed since, nobody's work is overwritten: the change
        is skipped and returned as a :class:`LabelConflict`. The check and the
        write happen in one write transaction that queues behind every other
        writer, so two people can never both win.
        """
        if source not in LABEL_SOURCES:
            raise ValueError(f"label source must be one of {LABEL_SOURCES}, got {source!r}")
        action = action or uuid.uuid4().hex
        changes = [(int(product_id), clean_label(label), seen) for product_id, label, seen in changes]
        conflicts, events = [], []
        now = utc_now()
        with self.transaction():
            current = self._latest_labels([product_id for product_id, _, _ in changes])
            for product_id, label, seen in changes:
                previous, previous_author = current.get(product_id, (None, None))
                if seen is not ANY and clean_label(seen) != previous:
                    conflicts.append(LabelConflict(product_id, seen, previous, label, previous_author))
                    continue
                if previous == label or (only_if_unlabelled and previous is not None):
                    continue
                events.append({"id": product_id, "label": label, "previous": previous, "source": source,
                               "author": author, "now": now, "action": action})
                current[product_id] = (label, author)  # a product named twice in one call sees its first change
            self._append_labels(events)
        return len(events), conflicts

    def _latest_labels(self, product_ids: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
        """``{product_id: (label, author)}`` of each product's latest label event (label None: removed)."""
        ids, latest = sorted(set(product_ids)), {}
        for start in range(0, len(ids), 500):
            for product_id, label, author in self._rows(
                    "SELECT cl.product_id, cl.label, l.author FROM current_labels cl "
                    "JOIN labels l ON l.id = cl.event_id WHERE cl.product_id IN :ids",
                    {"ids": ids[start:start + 500]}, mappings=False):
                latest[int(product_id)] = (label, author)
        return latest

    def _append_label(self, product_id: int, label: str | None, previous: str | None, source: str,
                      author: str | None, now: str, action: str | None) -> None:
        self._append_labels([{"id": product_id, "label": label, "previous": previous, "source": source,
                              "author": author, "now": now, "action": action}])

    def _append_labels(self, events: list[dict]) -> None:
        """Label events, and each product's current label beside them (same transaction).

        The events go in as multi-row INSERTs that return their ids in order (a round trip per
        thousand labels on PostgreSQL, not one per label); each product's newest event becomes its
        current label.
        """
        if not events:
            return
        rows = [{"product_id": e["id"], "label": e["label"], "previous_label": e["previous"], "source": e["source"],
                 "author": e["author"], "created_at": e["now"], "action": e["action"]} for e in events]
        with self._translated_errors():
            event_ids = self._connection().execute(_INSERT_LABELS, rows).scalars().all()
        newest = {}
        for event, event_id in zip(events, event_ids):
            newest[event["id"]] = {"id": event["id"], "label": event["label"], "source": event["source"],
                                   "event": int(event_id)}
        self._execute("INSERT INTO current_labels VALUES (:id, :label, :source, :event) ON CONFLICT (product_id) "
                      "DO UPDATE SET label = excluded.label, source = excluded.source, event_id = excluded.event_id",
                      list(newest.values()))

    def label_history(self, product_id: int | None = None, limit: int | None = None) -> list[LabelEvent]:
        query = "SELECT * FROM labels"
        parameters: dict = {}
        if product_id is not None:
            query += " WHERE product_id = :id"
            parameters["id"] = int(product_id)
        query += " ORDER BY id DESC"
        if limit:
            query += " LIMIT :limit"
            parameters["limit"] = int(limit)
        return [LabelEvent(**row) for row in self._rows(query, parameters)]

    def last_action(self, author: str | None) -> str | None:
        """``author``'s latest labelling action that is not an import, an undo, or already undone."""
        return self._value(
            "SELECT action FROM labels l WHERE action IS NOT NULL AND source != 'import' "
            "AND action NOT LIKE 'undo:%' AND author IS NOT DISTINCT FROM CAST(:author AS TEXT) "
            "AND NOT EXISTS (SELECT 1 FROM labels u WHERE u.action = 'undo:' || l.action) "
            "ORDER BY id DESC LIMIT 1", {"author": author})

    def action_events(self, action: str) -> list[LabelEvent]:
        """The label events of one action, oldest first."""
        return [LabelEvent(**row) for row in self._rows("SELECT * FROM labels WHERE action = :action ORDER BY id",
                                                        {"action": action})]

    def count_label_events(self, source: str) -> int:
        return int(self._value("SELECT COUNT(*) FROM labels WHERE source = :source", {"source": source}))

    def categories(self) -> list[str]:
        """The categories of the live products' current labels, sorted (the database does the DISTINCT)."""
        rows = self._rows(f"SELECT DISTINCT label FROM current_labels WHERE label IS NOT NULL AND product_id {_LIVE}",
                          mappings=False)
        return sorted(row[0] for row in rows)

    # -- category tree -----------------------------------------------------------
    def category_parents(self) -> dict[str, str]:
        """``{category: parent}`` (see :mod:`core.model.hierarchy`)."""
        return {row[0]: row[1] for row in self._rows("SELECT category, parent FROM category_parents",
                                                     mappings=False)}

    def set_category_parents(self, pairs: Iterable[tuple[str, str | None]], author: str | None = None,
                             only_if_missing: bool = False) -> int:
        """Give categories a parent (``None``: make it a root); return how many changed.

        With ``only_if_missing`` a category that already has a parent keeps it (imports:
        a folder tree never overrides a person's choice). A parent that would make the
        tree loop is refused with the category's name, and nothing is written.
        """
        from core.model.hierarchy import MAX_DEPTH, Taxonomy

        changed = 0
        with self.transaction():
            parents = self.category_parents()
            for category, parent in pairs:
                category, parent = clean_label(category), clean_label(parent)
                if category is None:
                    raise InvalidInputError("a category name is empty")
                if parents.get(category) == parent or (only_if_missing and category in parents):
                    continue
                if parent is None:
                    parents.pop(category, None)
                    self._execute("DELETE FROM category_parents WHERE category = :category", {"category": category})
                else:
                    taxonomy = Taxonomy(parents)
                    if taxonomy.would_loop(category, parent) or taxonomy.depth(parent) + 1 >= MAX_DEPTH:
                        raise InvalidInputError(f"{parent!r} cannot be the parent of {category!r}: "
                                                f"{parent!r} is {category!r} or lies under it")
                    parents[category] = parent
                    self._execute(
                        "INSERT INTO category_parents VALUES (:category, :parent, :author, :now) "
                        "ON CONFLICT (category) DO UPDATE SET parent = excluded.parent, author = excluded.author, "
                        "created_at = excluded.created_at",
                        {"category": category, "parent": parent, "author": author, "now": utc_now()})
                changed += 1
        return changed

    def rename_in_tree(self, old: str, new: str) -> None:
        """After a rename or merge: ``old``'s children move under ``new``; ``new`` takes ``old``'s parent if it
        has none."""
        parents = self.category_parents()
        moves = [(child, new) for child, parent in parents.items() if parent == old and child != new]
        if old in parents and new not in parents and parents[old] != new:
            moves.append((new, parents[old]))
        with self.transaction():
            self.set_category_parents(moves)
            self.set_category_parents([(old, None)])

    # -- embeddings ------------------------------------------------------------
    def missing_embeddings(self, embedding_key: str) -> list[int]:
        rows = self._rows("SELECT id FROM products WHERE id NOT IN (SELECT product_id FROM embeddings "
                          f"WHERE backbone = :key) AND id {_LIVE} ORDER BY id", {"key": embedding_key}, mappings=False)
        return [int(row[0]) for row in rows]

    def store_embeddings(self, embedding_key: str, product_ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float16)
        rows = [{"id": int(pid), "key": embedding_key, "dim": int(vec.shape[0]), "vector": vec.tobytes()}
                for pid, vec in zip(product_ids, vectors)]
        if not rows:
            return
        with self.transaction():
            self._execute("INSERT INTO embeddings (product_id, backbone, dim, vector) VALUES (:id, :key, :dim, "
                          ":vector) ON CONFLICT (product_id, backbone) DO UPDATE SET dim = excluded.dim, "
                          "vector = excluded.vector", rows)

    def embeddings(self, embedding_key: str, product_ids: Sequence[int] | None = None,
                   dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(product_ids, vectors)`` of the products that have vectors under ``embedding_key``; ``dtype``
        ``np.float16`` gives the stored values without a converted copy (a streamed fit converts them itself)."""
        query = "SELECT product_id, vector FROM embeddings WHERE backbone = :key"
        if product_ids is None:
            rows = self._fetched(query + f" AND product_id {_LIVE} ORDER BY product_id", {"key": embedding_key})
        else:
            # Ask the database for just these rows: an upload of 50 photos must not read a 100k catalogue.
            ids = sorted({int(pid) for pid in product_ids})
            rows = []
            for start in range(0, len(ids), 500):
                rows += self._fetched(query + " AND product_id IN :ids ORDER BY product_id",
                                      {"key": embedding_key, "ids": ids[start:start + 500]})
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=dtype)
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.float16)
        return ids, vectors.reshape(len(rows), -1).astype(dtype, copy=False)

    def embedded_product_ids(self, embedding_key: str) -> list[int]:
        """Ids of the live products that have a vector under ``embedding_key``, without reading the vectors."""
        return self._ids(f"SELECT product_id FROM embeddings WHERE backbone = :key AND product_id {_LIVE} "
                         "ORDER BY product_id", {"key": embedding_key})

    def count_embeddings(self, embedding_key: str) -> int:
        return int(self._value("SELECT COUNT(*) FROM embeddings WHERE backbone = :key", {"key": embedding_key}))

    # -- model versions ----------------------------------------------------------
    def add_model_version(self, embedding_key: str, classes: Sequence[str], metrics: dict, params: dict,
                          path: str, activate: bool = True) -> int:
        with self.transaction():
            version_id = int(self._execute(
                "INSERT INTO model_versions (backbone, classes, metrics, params, path, created_at, is_active) "
                "VALUES (:key, :classes, :metrics, :params, :path, :now, 0) RETURNING id",
                {"key": embedding_key, "classes": json.dumps(list(classes)), "metrics": json.dumps(metrics),
                 "params": json.dumps(params), "path": path, "now": utc_now()}).scalar_one())
            if activate:
                self.activate_model_version(version_id)
        return version_id

    def activate_model_version(self, version_id: int) -> None:
        with self.transaction():
            if self._value("SELECT 1 FROM model_versions WHERE id = :id", {"id": int(version_id)}) is None:
                raise NotFoundError(f"no model version {version_id}")
            self._execute("UPDATE model_versions SET is_active = CASE WHEN id = :id THEN 1 ELSE 0 END",
                          {"id": int(version_id)})

    def model_versions(self) -> list[ModelVersion]:
        return [_model_row(row) for row in self._rows("SELECT * FROM model_versions ORDER BY id")]

    def model_version(self, version_id: int) -> ModelVersion:
        row = self._row("SELECT * FROM model_versions WHERE id = :id", {"id": int(version_id)})
        if row is None:
            raise NotFoundError(f"no model version {version_id}")
        return _model_row(row)

    def active_model_version(self) -> ModelVersion | None:
        row = self._row("SELECT * FROM model_versions WHERE is_active = 1 ORDER BY id DESC LIMIT 1")
        return None if row is None else _model_row(row)

    # -- predictions -------------------------------------------------------------
    def store_predictions(self, model_id: int, product_ids: Sequence[int], top_labels: Sequence[Sequence[str]],
                          top_probabilities: np.ndarray, new_category: Sequence[bool | None] | None = None) -> None:
        """``new_category``: per product, whether it looks like no labelled product (None: not judged)."""
        now = utc_now()
        flags = [None] * len(product_ids) if new_category is None else list(new_category)
        stored = [[round(float(p), 6) for p in probs] for probs in top_probabilities]
        margins, entropies = _uncertainty(stored)
        rows = [
            {"id": int(pid), "model": int(model_id), "top": labels[0], "confidence": float(probs[0]),
             "labels": json.dumps(list(labels)), "probabilities": json.dumps(rounded),
             "now": now, "new": None if new is None else int(bool(new)), "margin": margin, "entropy": entropy}
            for pid, labels, probs, rounded, new, margin, entropy
            in zip(product_ids, top_labels, top_probabilities, stored, flags, margins, entropies)
        ]
        if not rows:
            return
        with self.transaction():
            self._execute(
                "INSERT INTO predictions (product_id, model_id, top_label, confidence, labels, probabilities, "
                "created_at, new_category, margin, entropy) VALUES (:id, :model, :top, :confidence, :labels, "
                ":probabilities, :now, :new, :margin, :entropy) ON CONFLICT (product_id, model_id) DO UPDATE SET "
                "top_label = excluded.top_label, confidence = excluded.confidence, labels = excluded.labels, "
                "probabilities = excluded.probabilities, created_at = excluded.created_at, "
                "new_category = excluded.new_category, margin = excluded.margin, entropy = excluded.entropy", rows)

    def _store_uncertainty(self, chunk_size: int = 20_000) -> None:
        """Fill the margin and entropy of every stored prediction (the schema-7 upgrade; in its transaction)."""
        last = (-1, -1)
        while True:
            # Keyset pages in the primary key's order: each chunk is an index range, never a sort.
            rows = self._rows("SELECT product_id, model_id, probabilities FROM predictions "
                              "WHERE product_id > :product OR (product_id = :product AND model_id > :model) "
                              "ORDER BY product_id, model_id LIMIT :limit",
                              {"product": last[0], "model": last[1], "limit": chunk_size}, mappings=False)
            if not rows:
                return
            margins, entropies = _uncertainty([json.loads(probabilities) for _, _, probabilities in rows])
            self._execute("UPDATE predictions SET margin = :margin, entropy = :entropy "
                          "WHERE product_id = :product AND model_id = :model",
                          [{"product": product, "model": model, "margin": margin, "entropy": entropy}
                           for (product, model, _), margin, entropy in zip(rows, margins, entropies)])
            last = (rows[-1][0], rows[-1][1])

    def predictions(self, model_id: int, product_ids: Sequence[int] | None = None) -> dict[int, dict]:
        """The stored predictions of model version ``model_id``: of every product, or of ``product_ids`` only
        (read by id, so a page showing a few products never reads the whole catalogue's)."""
        query = ("SELECT product_id, top_label, confidence, labels, probabilities, new_category "
                 "FROM predictions WHERE model_id = :model")
        if product_ids is None:
            rows = self._rows(query, {"model": int(model_id)}, mappings=False)
        else:
            ids, rows = sorted({int(pid) for pid in product_ids}), []
            for start in range(0, len(ids), 500):
                rows += self._rows(query + " AND product_id IN :ids",
                                   {"model": int(model_id), "ids": ids[start:start + 500]}, mappings=False)
        return {
            int(pid): {
                "label": top, "confidence": confidence, "labels": json.loads(labels),
                "probabilities": json.loads(probabilities), "new_category": None if new is None else bool(new),
            }
            for pid, top, confidence, labels, probabilities, new in rows
        }

    def count_predictions(self, model_id: int) -> int:
        return int(self._value("SELECT COUNT(*) FROM predictions WHERE model_id = :model", {"model": int(model_id)}))

    def review_rows(self, model_id: int | None, product_ids: Sequence[int] | None = None) -> list[tuple]:
        """One row per live product (or per live product of ``product_ids``) for the review table, in one
        query: ``(product_id, filename, source, added_at, label, label_source, predicted_label, confidence,
        labels, probabilities, new_category)`` (the prediction columns are None without a prediction of
        ``model_id``; labels and probabilities are JSON text)."""
        query = ("SELECT p.id, p.filename, p.source, p.added_at, cl.label, cl.source, pr.top_label, pr.confidence, "
                 "pr.labels, pr.probabilities, pr.new_category FROM products p "
                 "LEFT JOIN current_labels cl ON cl.product_id = p.id AND cl.label IS NOT NULL "
                 "LEFT JOIN predictions pr ON pr.product_id = p.id AND pr.model_id = :model "
                 f"WHERE p.id {_LIVE}")
        parameters = {"model": -1 if model_id is None else int(model_id)}
        if product_ids is None:
            return self._rows(query + " ORDER BY p.id", parameters, mappings=False)
        ids, rows = sorted({int(pid) for pid in product_ids}), []
        for start in range(0, len(ids), 500):
            rows += self._rows(query + " AND p.id IN :ids ORDER BY p.id", {**parameters, "ids": ids[start:start + 500]},
                               mappings=False)
        return rows

    def acceptable_predictions(self, model_id: int, threshold: float,
                               product_ids: Sequence[int] | None = None) -> list[tuple[int, str]]:
        """``(product id, predicted label)`` of the live unlabelled products (of ``product_ids``, default
        every one) whose prediction by ``model_id`` is at least ``threshold`` sure and not flagged "new
        category?", selected by the database."""
        query = ("SELECT pr.product_id, pr.top_label FROM predictions pr "
                 "LEFT JOIN current_labels cl ON cl.product_id = pr.product_id AND cl.label IS NOT NULL "
                 "WHERE pr.model_id = :model AND cl.product_id IS NULL AND pr.confidence >= :threshold "
                 f"AND (pr.new_category IS NULL OR pr.new_category = 0) AND pr.product_id {_LIVE}")
        parameters = {"model": int(model_id), "threshold": float(threshold)}
        if product_ids is None:
            return [(int(pid), label) for pid, label in self._rows(query + " ORDER BY pr.product_id", parameters,
                                                                    mappings=False)]
        ids, rows = sorted({int(pid) for pid in product_ids}), []
        for start in range(0, len(ids), 500):
            rows += self._rows(query + " AND pr.product_id IN :ids ORDER BY pr.product_id",
                               {**parameters, "ids": ids[start:start + 500]}, mappings=False)
        return [(int(pid), label) for pid, label in rows]

    def review_count(self, model_id: int | None, where: ReviewFilter) -> int:
        """How many live products ``where`` keeps, counted in the database."""
        sql, parameters = self._review_query("COUNT(*)", model_id, where)
        return int(self._value(sql, parameters))

    def review_ids(self, model_id: int | None, where: ReviewFilter, order: str, offset: int = 0,
                   limit: int | None = None) -> list[int]:
        """The ids of the live products ``where`` keeps, sorted by ``order`` (one of :data:`REVIEW_SORTS`)
        and paged in the database: a page of a million-product catalogue reads a page of ids."""
        if order not in REVIEW_SORTS:
            raise ValueError(f"order must be one of {tuple(REVIEW_SORTS)}, got {order!r}")
        sql, parameters = self._review_query("p.id", model_id, where)
        # Categories sort by code point, as in Python, on both databases (PostgreSQL would otherwise follow
        # its server locale; the test server runs in the C locale, so the tests cannot tell).
        sort = REVIEW_SORTS[order].format(collate="" if self.is_sqlite else ' COLLATE "C"')
        sql += f" ORDER BY {sort}"
        if limit is not None:
            sql += " LIMIT :limit OFFSET :offset"
            parameters.update(limit=int(limit), offset=int(offset))
        return self._ids(sql, parameters)

    def review_states(self, model_id: int | None, where: ReviewFilter) -> np.ndarray:
        """``(n, 2)`` int64 rows ``(product id, labelled)`` of the live products ``where`` keeps, by id:
        enough to lay them out in a stored queue's order without reading their rows."""
        sql, parameters = self._review_query("p.id, CASE WHEN cl.label IS NULL THEN 0 ELSE 1 END", model_id, where)
        return np.array(self._fetched(sql + " ORDER BY p.id", parameters), dtype=np.int64).reshape(-1, 2)

    def _review_query(self, columns: str, model_id: int | None, where: ReviewFilter) -> tuple[str, dict]:
        conditions, parameters = [f"p.id {_LIVE}"], {"model": -1 if model_id is None else int(model_id)}
        if where.predicted:
            conditions.append("pr.top_label IN :predicted_in")
            parameters["predicted_in"] = sorted(where.predicted)
        if tuple(where.confidence_range) != (0.0, 1.0):
            conditions.append("pr.confidence BETWEEN :low AND :high")
            parameters.update(low=float(where.confidence_range[0]), high=float(where.confidence_range[1]))
        if where.labelled is not None:
            conditions.append("cl.label IS NOT NULL" if where.labelled else "cl.label IS NULL")
        if where.disagreements_only:
            conditions.append("cl.label IS NOT NULL AND pr.top_label IS NOT NULL AND cl.label <> pr.top_label")
        if where.new_category_only:
            conditions.append("pr.new_category = 1")
        if where.named is not None:
            if not where.named:
                conditions.append("1 = 0")
            else:
                conditions.append("(cl.label IN :named_in OR pr.top_label IN :named_in)")
                parameters["named_in"] = sorted(where.named)
        # "+pr.model_id" keeps SQLite from walking the (model, confidence) index and fetching a million
        # prediction rows in its order once a filter makes the join an inner one: 5 s instead of 0.5 s at 1M.
        return (f"SELECT {columns} FROM products p "
                "LEFT JOIN current_labels cl ON cl.product_id = p.id AND cl.label IS NOT NULL "
                "LEFT JOIN predictions pr ON pr.product_id = p.id AND +pr.model_id = :model "
                f"WHERE {' AND '.join(conditions)}"), parameters

    # -- accounts ------------------------------------------------------------------
    # Rows only; hashing, roles and permissions live in core.security.accounts.
    def add_user(self, name: str, password_hash: str, role: str) -> None:
        with self.transaction():
            if self._value("SELECT 1 FROM users WHERE name = :name", {"name": name}) is not None:
                raise InvalidInputError(f"an account named {name!r} already exists "
                                        "(use `users passwd` or `users role`)")
            self._execute("INSERT INTO users VALUES (:name, :hash, :role, :now)",
                          {"name": name, "hash": password_hash, "role": role, "now": utc_now()})

    def update_user(self, name: str, password_hash: str | None = None, role: str | None = None) -> None:
        with self.transaction():
            if self._value("SELECT 1 FROM users WHERE name = :name", {"name": name}) is None:
                raise NotFoundError(f"no account named {name!r}")
            if password_hash is not None:
                self._execute("UPDATE users SET password_hash = :hash WHERE name = :name",
                              {"hash": password_hash, "name": name})
            if role is not None:
                self._execute("UPDATE users SET role = :role WHERE name = :name", {"role": role, "name": name})

    def remove_user(self, name: str) -> None:
        with self.transaction():
            if self._execute("DELETE FROM users WHERE name = :name", {"name": name}).rowcount == 0:
                raise NotFoundError(f"no account named {name!r}")

    def users(self) -> list[dict]:
        """Every account: ``name, role, created_at`` (never the password hash)."""
        return [dict(row) for row in self._rows("SELECT name, role, created_at FROM users ORDER BY name")]

    def user_password_hash(self, name: str) -> tuple[str, str] | None:
        """``(password_hash, role)`` of an account, None if there is no such account."""
        row = self._row("SELECT password_hash, role FROM users WHERE name = :name", {"name": name})
        return None if row is None else (row["password_hash"], row["role"])

    def has_accounts(self) -> bool:
        return self._value("SELECT 1 FROM users LIMIT 1") is not None

    # -- summary -----------------------------------------------------------------
    def status(self) -> dict:
        """Counts for the Home page and ``status``: a few indexed queries, whatever the catalogue's size."""
        active = self.active_model_version()
        products = self.count_products()
        labelled, categories = self._rows(f"SELECT COUNT(*), COUNT(DISTINCT label) FROM current_labels "
                                          f"WHERE label IS NOT NULL AND product_id {_LIVE}", mappings=False)[0]
        return {
            "workspace": str(self.workspace),
            "products": products,
            "labelled": int(labelled),
            "unlabelled": products - int(labelled),
            "categories": int(categories),
            "active_model": None if active is None else {
                "version": active.id, "embedding_key": active.embedding_key, "classes": len(active.classes),
                "accuracy": active.metrics.get("accuracy"), "created_at": active.created_at,
            },
        }


def is_inside(relative: str, folder: str) -> bool:
    """Whether a stored relative path names a file inside ``folder`` (no absolute path, no ``..``)."""
    parts = PurePosixPath(str(relative)).parts
    return (len(parts) >= 2 and parts[0] == folder and ".." not in parts and "\\" not in str(relative)
            and not str(relative).startswith("/"))


def _holds_data(workspace: Path) -> bool:
    return any(any((workspace / folder).glob("**/*.*")) for folder in ("images", "models"))


@contextmanager
def _translated_errors(database_path: Path, server: str | None = None) -> Iterator[None]:
    """Storage failures as one-line errors that say what to do (``server``: a PostgreSQL catalogue's URL)."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except (sqlite3.DatabaseError, DBAPIError) as error:
        original = getattr(error, "orig", None) or error
        if server is not None:
            raise CatalogError(server_error_message(original, server)) from None
        raise CatalogError(storage_error_message(original, database_path)) from None
    except OSError as error:
        if error.errno in _DISK_ERRNOS:
            raise CatalogError(storage_error_message(error, database_path)) from None
        raise


def server_error_message(error: BaseException, server: str) -> str:
    """What went wrong with a PostgreSQL catalogue, in one line (never the password)."""
    text = " ".join(str(error).split())
    if "connection" in text.lower() and ("refused" in text.lower() or "failed" in text.lower()
                                         or "timeout" in text.lower()):
        return f"cannot reach the PostgreSQL catalogue at {server}: is the server running? ({text[:200]})"
    return f"the PostgreSQL catalogue at {server} refused the request ({text[:300]})"


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error_message(error: BaseException, database_path: Path) -> str:
    """What went wrong with the workspace's storage, and what to do, in one line."""
    text = str(error).lower()
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "full" in text:
        return (f"the disk holding {database_path.parent} is full: free some space and run the command again "
                "(what was already saved is kept)")
    unwritable = "unable to open" in text and not os.access(database_path.parent, os.W_OK)
    if unwritable or "readonly" in text or "read-only" in text or (isinstance(error, OSError) and error.errno in (
            errno.EROFS, errno.EACCES, errno.EPERM)):
        return (f"{database_path.parent} is read-only for this user: reading works, changes need write access "
                "to the folder and catalog.sqlite")
    if "locked" in text or "busy" in text:
        return f"{database_path} stayed locked by another process for 30 s: try again"
    if "not a database" in text or "malformed" in text or "corrupt" in text or "disk i/o" in text:
        return (f"{database_path} is damaged ({error}): restore the workspace from a backup "
                "(`python -m core restore BACKUP.zip --workspace NEW_FOLDER`)")
    return f"cannot use {database_path} ({error})"


def clean_label(label: str | None) -> str | None:
    """A category name as stored: stripped, ``None`` for empty; too long or unprintable is an error.

    Every way a label comes in (a person, an import, a rename) goes through here.
    """
    if label is None:
        return None
    label = str(label).strip()
    if not label:
        return None
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidInputError(f"a category name can be at most {MAX_LABEL_LENGTH} characters "
                                f"(this one has {len(label)})")
    if any(not character.isprintable() for character in label):
        raise InvalidInputError("a category name cannot contain control characters")
    return label


# The one statement built with SQLAlchemy's table objects: a multi-row INSERT that returns its ids in the
# order of its rows (SQLAlchemy's "insertmanyvalues"), on SQLite and PostgreSQL alike. Built once, so its
# compiled form is cached.
_LABELS = Table("labels", MetaData(), Column("id", Integer, primary_key=True), Column("product_id", Integer),
                *(Column(name, Text) for name in ("label", "previous_label", "source", "author", "created_at",
                                                  "action")))
_INSERT_LABELS = insert(_LABELS).returning(_LABELS.c.id, sort_by_parameter_order=True)


@functools.lru_cache(maxsize=1024)
def _statement(sql: str):
    # Every query is written once with named parameters; SQLAlchemy renders it for SQLite or psycopg.
    statement = text(sql)
    # A list (``:ids``, or a name ending in ``_in``): rendered as IN (..., ...).
    expanding = [name for name in dict.fromkeys(re.findall(r":(\w+)", sql)) if name == "ids" or name.endswith("_in")]
    if expanding:
        statement = statement.bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return statement


def _model_row(row) -> ModelVersion:
    # The column keeps its historical name "backbone"; it has always held an embedding key.
    return ModelVersion(id=int(row["id"]), embedding_key=row["backbone"], classes=json.loads(row["classes"]),
                        metrics=json.loads(row["metrics"]), params=json.loads(row["params"]), path=row["path"],
                        created_at=row["created_at"], is_active=bool(row["is_active"]))
