"""The product catalogue: one SQLite file plus content-addressed image files.

A *workspace* directory holds ``catalog.sqlite``, ``images/`` (each photo stored
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
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import numpy as np

from core import settings
from core.errors import CatalogError, InvalidInputError, NotFoundError
from core.storage.atomic import atomic_write_bytes

SCHEMA_VERSION = 4
# Statements that take a workspace from version N-1 to N; run in order, in one transaction.
# (Tables added by a version need no statement: the schema below creates what is missing.)
_MIGRATIONS = {
    2: ["ALTER TABLE labels ADD COLUMN action TEXT"],  # undo groups label events by action
    3: [],  # accounts (users table)
    4: ["ALTER TABLE predictions ADD COLUMN new_category INTEGER"],  # "new category?" flag (core.model.novelty)
}
ROLES = ("viewer", "labeller", "admin")
LABEL_SOURCES = ("human", "import", "model-accepted")
DATABASE_NAME = "catalog.sqlite"
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

_CURRENT_LABELS = """
SELECT l.product_id AS product_id, l.label AS label, l.source AS source
FROM labels l
JOIN (SELECT product_id, MAX(id) AS id FROM labels GROUP BY product_id) latest ON latest.id = l.id
WHERE l.product_id NOT IN (SELECT product_id FROM archived)
"""


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


class Catalog:
    """A workspace's catalogue. Safe to share between threads (one connection each).

    ``create=True`` (the app, ``import``) makes the workspace if needed and tidies
    it; ``create=False`` (every command that only reads) opens an existing one and
    writes nothing until asked to, so ``status``, ``history`` and ``backup`` work
    on a read-only or full disk. A damaged, truncated or foreign ``catalog.sqlite``
    is a :class:`CatalogError` saying what to do, never a half-opened catalogue.
    """

    def __init__(self, workspace: str | os.PathLike | None = None, create: bool = True):
        self.workspace = settings.workspace_dir(workspace).resolve()
        self.database_path = self.workspace / DATABASE_NAME
        if self.workspace.exists() and not self.workspace.is_dir():
            raise CatalogError(f"workspace {self.workspace} exists and is not a directory")
        if not self.database_path.exists() and not create:
            raise CatalogError(f"no catalogue in {self.workspace}: run `python -m core import PATH` first")
        if self.database_path.exists() and self.database_path.stat().st_size == 0 and _holds_data(self.workspace):
            # An empty file beside photos and models is a lost catalogue, not a new one.
            raise CatalogError(f"{self.database_path} is empty (0 bytes) but the workspace holds photos or models: "
                               "restore it from a backup (`python -m core restore`) instead of starting over")
        self._local = threading.local()
        self._read_only = not create and not (os.access(self.database_path, os.W_OK)
                                              and os.access(self.workspace, os.W_OK))
        with _translated_errors(self.database_path):
            if create:
                for sub in ("images", "models", "exports"):
                    (self.workspace / sub).mkdir(parents=True, exist_ok=True)
            self._initialise(create)
            if create:
                self.discard_partial_files()

    # -- connection handling -------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._read_only:
                # A read-only file (or folder) cannot host WAL's shared-memory file: read it as immutable.
                uri = f"{self.database_path.as_uri()}?mode=ro&immutable=1"
                connection = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            else:
                connection = sqlite3.connect(self.database_path, timeout=30.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute("PRAGMA foreign_keys=ON")
            if not self._read_only:
                connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: writers queue instead of failing on a lock.

        A write the disk refuses (read-only, full, damaged) is a one-line
        :class:`CatalogError`; the transaction is rolled back, so nothing is half-written.
        """
        connection = self.connection
        if connection.in_transaction:  # nested use joins the outer transaction
            yield connection
            return
        with _translated_errors(self.database_path):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _initialise(self, create: bool) -> None:
        connection = self.connection
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise CatalogError(
                f"workspace {self.workspace} was written by a newer ProductLens (schema "
                f"{version}, this version knows {SCHEMA_VERSION}): upgrade ProductLens"
            )
        if version == SCHEMA_VERSION:
            if create and connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return  # up to date: opening writes nothing
        if version is None and not create:
            raise CatalogError(f"{self.database_path} is not a ProductLens catalogue (no schema version): "
                               "restore it from a backup or choose another --workspace")
        if self._read_only:
            raise CatalogError(f"{self.database_path} needs upgrading (schema {version} to {SCHEMA_VERSION}) "
                               "but is read-only: open it once with write access")
        connection.execute("PRAGMA journal_mode=WAL")
        if version is not None:
            # Keep the pre-migration database: an upgrade must never cost a label.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            backup = self.database_path.with_name(f"{DATABASE_NAME}.schema{version}.bak")
            with sqlite3.connect(backup) as target:
                connection.backup(target)
        with self.transaction() as connection:
            if version is not None:
                for target_version in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target_version]:
                        connection.execute(statement)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def schema_version(self) -> int | None:
        """The workspace's schema version, None for a new workspace."""
        connection = self.connection
        if connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return None
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            return None
        try:
            return int(row["value"])
        except (TypeError, ValueError):
            raise CatalogError(f"{self.database_path} has an invalid schema version ({row['value']!r}): "
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
        return self.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

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
        existing = self.connection.execute("SELECT id FROM products WHERE sha256 = ?", (sha256,)).fetchone()
        if existing:
            # Uploading an archived photo again is a deliberate "I want it back".
            with self.transaction() as connection:
                connection.execute("DELETE FROM archived WHERE product_id = ?", (int(existing["id"]),))
            return int(existing["id"]), False
        relative = Path("images") / sha256[:2] / f"{sha256}{extension}"
        target = self.workspace / relative
        # File first, row second: a crash in between leaves an unreferenced file,
        # never a row that points at nothing.
        if not target.exists():
            with _translated_errors(self.database_path):  # a full or read-only disk: one line, batch stops
                atomic_write_bytes(target, data)
        with self.transaction() as connection:
            existing = connection.execute("SELECT id FROM products WHERE sha256 = ?", (sha256,)).fetchone()
            if existing:
                return int(existing["id"]), False
            cursor = connection.execute(
                "INSERT INTO products (sha256, filename, source, stored_path, format, width, height, "
                "size_bytes, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, filename, source, relative.as_posix(), image_format, width, height, len(data), utc_now()),
            )
            product_id = int(cursor.lastrowid)
            if label is not None:
                connection.execute(
                    "INSERT INTO labels (product_id, label, previous_label, source, author, created_at, action) "
                    "VALUES (?, ?, NULL, 'import', NULL, ?, ?)", (product_id, label, utc_now(), action))
            return product_id, True

    def get_product(self, product_id: int) -> Product:
        row = self.connection.execute("SELECT * FROM products WHERE id = ?", (int(product_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"no product with id {product_id}")
        return Product(**dict(row))

    def products(self, product_ids: Sequence[int] | None = None) -> list[Product]:
        if product_ids is None:
            rows = self.connection.execute(f"SELECT * FROM products WHERE id {_LIVE} ORDER BY id").fetchall()
        else:
            rows = []
            ids = [int(i) for i in product_ids]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows += self.connection.execute(
                    f"SELECT * FROM products WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            order = {pid: i for i, pid in enumerate(ids)}
            rows.sort(key=lambda row: order[row["id"]])
        return [Product(**dict(row)) for row in rows]

    def product_ids(self) -> list[int]:
        return [row[0] for row in self.connection.execute(f"SELECT id FROM products WHERE id {_LIVE} ORDER BY id")]

    def count_products(self) -> int:
        return int(self.connection.execute(f"SELECT COUNT(*) FROM products WHERE id {_LIVE}").fetchone()[0])

    def archive_products(self, product_ids: Sequence[int], reason: str, kept_product_id: int | None = None,
                         author: str | None = None) -> int:
        """Take products out of the catalogue without deleting anything; return how many."""
        now = utc_now()
        with self.transaction() as connection:
            before = connection.total_changes
            connection.executemany(
                "INSERT OR IGNORE INTO archived (product_id, kept_product_id, reason, author, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(int(pid), kept_product_id, reason, author, now) for pid in product_ids])
            return connection.total_changes - before

    def restore_products(self, product_ids: Sequence[int]) -> int:
        with self.transaction() as connection:
            before = connection.total_changes
            connection.executemany("DELETE FROM archived WHERE product_id = ?", [(int(pid),) for pid in product_ids])
            return connection.total_changes - before

    def archived(self) -> list[dict]:
        return [dict(row) for row in self.connection.execute("SELECT * FROM archived ORDER BY created_at, product_id")]

    # -- label verdicts ------------------------------------------------------------
    def set_label_verdicts(self, product_ids: Sequence[int], author: str | None = None,
                           seen: dict[int, str | None] | None = None) -> int:
        """Remember that a person checked each product's current label and found it right; return how many.

        With ``seen`` (product id → the label the person looked at), a product whose
        label changed since is left out: nobody vouches for a label they never saw.
        """
        with self.transaction() as connection:
            rows = []
            for pid in product_ids:
                current = connection.execute("SELECT label FROM labels WHERE product_id = ? ORDER BY id DESC LIMIT 1",
                                             (int(pid),)).fetchone()
                label = None if current is None else current["label"]
                if label is None or (seen is not None and seen.get(int(pid), label) != label):
                    continue
                rows.append((int(pid), label, author, utc_now()))
            connection.executemany("INSERT OR REPLACE INTO label_verdicts VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def label_verdicts(self) -> dict[int, str]:
        """``{product_id: label a person confirmed}``."""
        return {int(row[0]): row[1] for row in self.connection.execute("SELECT product_id, label FROM label_verdicts")}

    # -- labels ----------------------------------------------------------------
    def current_labels_with_source(self) -> dict[int, tuple[str, str]]:
        """``{product_id: (label, source)}`` for every labelled product."""
        rows = self.connection.execute(_CURRENT_LABELS).fetchall()
        return {int(row["product_id"]): (row["label"], row["source"]) for row in rows if row["label"] is not None}

    def current_labels(self) -> dict[int, str]:
        """``{product_id: label}`` for every product whose latest label is not cleared."""
        return {pid: label for pid, (label, _source) in self.current_labels_with_source().items()}

    def current_label(self, product_id: int) -> str | None:
        row = self.connection.execute(
            "SELECT label FROM labels WHERE product_id = ? ORDER BY id DESC LIMIT 1", (int(product_id),)
        ).fetchone()
        return None if row is None else row["label"]

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
        write happen in one ``BEGIN IMMEDIATE`` transaction, so two people can
        never both win.
        """
        if source not in LABEL_SOURCES:
            raise ValueError(f"label source must be one of {LABEL_SOURCES}, got {source!r}")
        action = action or uuid.uuid4().hex
        changed, conflicts = 0, []
        now = utc_now()
        with self.transaction() as connection:
            for product_id, label, seen in changes:
                label = clean_label(label)
                row = connection.execute(
                    "SELECT label, author, created_at FROM labels WHERE product_id = ? ORDER BY id DESC LIMIT 1",
                    (int(product_id),)).fetchone()
                previous = None if row is None else row["label"]
                if seen is not ANY and clean_label(seen) != previous:
                    conflicts.append(LabelConflict(int(product_id), seen, previous, label,
                                                   row["author"] if row else None))
                    continue
                if previous == label or (only_if_unlabelled and previous is not None):
                    continue
                connection.execute(
                    "INSERT INTO labels (product_id, label, previous_label, source, author, created_at, action) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (int(product_id), label, previous, source, author, now, action),
                )
                changed += 1
        return changed, conflicts

    def label_history(self, product_id: int | None = None, limit: int | None = None) -> list[LabelEvent]:
        query = "SELECT * FROM labels"
        parameters: list = []
        if product_id is not None:
            query += " WHERE product_id = ?"
            parameters.append(int(product_id))
        query += " ORDER BY id DESC"
        if limit:
            query += " LIMIT ?"
            parameters.append(int(limit))
        return [LabelEvent(**dict(row)) for row in self.connection.execute(query, parameters)]

    def categories(self) -> list[str]:
        return sorted(set(self.current_labels().values()))

    # -- embeddings ------------------------------------------------------------
    def missing_embeddings(self, embedding_key: str) -> list[int]:
        rows = self.connection.execute(
            "SELECT id FROM products WHERE id NOT IN (SELECT product_id FROM embeddings WHERE backbone = ?) "
            f"AND id {_LIVE} ORDER BY id", (embedding_key,)).fetchall()
        return [row[0] for row in rows]

    def store_embeddings(self, embedding_key: str, product_ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float16)
        with self.transaction() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO embeddings (product_id, backbone, dim, vector) VALUES (?, ?, ?, ?)",
                [(int(pid), embedding_key, int(vec.shape[0]), vec.tobytes()) for pid, vec in zip(product_ids, vectors)],
            )

    def embeddings(self, embedding_key: str, product_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(product_ids, vectors)`` (float32) of the products that have vectors under ``embedding_key``."""
        query = "SELECT product_id, dim, vector FROM embeddings WHERE backbone = ?"
        if product_ids is None:
            rows = self.connection.execute(query + f" AND product_id {_LIVE} ORDER BY product_id",
                                           (embedding_key,)).fetchall()
        else:
            # Ask SQLite for just these rows: an upload of 50 photos must not read a 100k catalogue.
            ids = sorted({int(pid) for pid in product_ids})
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows += self.connection.execute(
                    query + f" AND product_id IN ({','.join('?' * len(chunk))}) ORDER BY product_id",
                    [embedding_key, *chunk]).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids = np.array([row["product_id"] for row in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(row["vector"] for row in rows), dtype=np.float16)
        return ids, vectors.reshape(len(rows), -1).astype(np.float32)

    def embedded_product_ids(self, embedding_key: str) -> list[int]:
        """Ids of the live products that have a vector under ``embedding_key``, without reading the vectors."""
        rows = self.connection.execute(f"SELECT product_id FROM embeddings WHERE backbone = ? AND product_id {_LIVE} "
                                       "ORDER BY product_id", (embedding_key,)).fetchall()
        return [int(row[0]) for row in rows]

    def count_embeddings(self, embedding_key: str) -> int:
        return int(self.connection.execute(
            "SELECT COUNT(*) FROM embeddings WHERE backbone = ?", (embedding_key,)).fetchone()[0])

    # -- model versions ----------------------------------------------------------
    def add_model_version(self, embedding_key: str, classes: Sequence[str], metrics: dict, params: dict,
                          path: str, activate: bool = True) -> int:
        with self.transaction() as connection:
            cursor = connection.execute(
                "INSERT INTO model_versions (backbone, classes, metrics, params, path, created_at, is_active) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                (embedding_key, json.dumps(list(classes)), json.dumps(metrics), json.dumps(params), path, utc_now()),
            )
            version_id = int(cursor.lastrowid)
            if activate:
                self.activate_model_version(version_id)
        return version_id

    def activate_model_version(self, version_id: int) -> None:
        with self.transaction() as connection:
            if connection.execute("SELECT 1 FROM model_versions WHERE id = ?", (int(version_id),)).fetchone() is None:
                raise NotFoundError(f"no model version {version_id}")
            connection.execute("UPDATE model_versions SET is_active = (id = ?)", (int(version_id),))

    def model_versions(self) -> list[ModelVersion]:
        rows = self.connection.execute("SELECT * FROM model_versions ORDER BY id").fetchall()
        return [_model_row(row) for row in rows]

    def model_version(self, version_id: int) -> ModelVersion:
        row = self.connection.execute("SELECT * FROM model_versions WHERE id = ?", (int(version_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"no model version {version_id}")
        return _model_row(row)

    def active_model_version(self) -> ModelVersion | None:
        row = self.connection.execute(
            "SELECT * FROM model_versions WHERE is_active = 1 ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else _model_row(row)

    # -- predictions -------------------------------------------------------------
    def store_predictions(self, model_id: int, product_ids: Sequence[int], top_labels: Sequence[Sequence[str]],
                          top_probabilities: np.ndarray, new_category: Sequence[bool | None] | None = None) -> None:
        """``new_category``: per product, whether it looks like no labelled product (None: not judged)."""
        now = utc_now()
        flags = [None] * len(product_ids) if new_category is None else list(new_category)
        with self.transaction() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO predictions (product_id, model_id, top_label, confidence, labels, "
                "probabilities, created_at, new_category) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (int(pid), int(model_id), labels[0], float(probs[0]), json.dumps(list(labels)),
                     json.dumps([round(float(p), 6) for p in probs]), now, None if new is None else int(bool(new)))
                    for pid, labels, probs, new in zip(product_ids, top_labels, top_probabilities, flags)
                ],
            )

    def predictions(self, model_id: int) -> dict[int, dict]:
        rows = self.connection.execute(
            "SELECT product_id, top_label, confidence, labels, probabilities, new_category FROM predictions "
            "WHERE model_id = ?", (int(model_id),)).fetchall()
        return {
            int(row["product_id"]): {
                "label": row["top_label"], "confidence": row["confidence"],
                "labels": json.loads(row["labels"]), "probabilities": json.loads(row["probabilities"]),
                "new_category": None if row["new_category"] is None else bool(row["new_category"]),
            }
            for row in rows
        }

    # -- accounts ------------------------------------------------------------------
    # Rows only; hashing, roles and permissions live in core.security.accounts.
    def add_user(self, name: str, password_hash: str, role: str) -> None:
        with self.transaction() as connection:
            if connection.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise InvalidInputError(f"an account named {name!r} already exists "
                                        "(use `users passwd` or `users role`)")
            connection.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (name, password_hash, role, utc_now()))

    def update_user(self, name: str, password_hash: str | None = None, role: str | None = None) -> None:
        with self.transaction() as connection:
            if connection.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"no account named {name!r}")
            if password_hash is not None:
                connection.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
            if role is not None:
                connection.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))

    def remove_user(self, name: str) -> None:
        with self.transaction() as connection:
            if connection.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"no account named {name!r}")

    def users(self) -> list[dict]:
        """Every account: ``name, role, created_at`` (never the password hash)."""
        return [dict(row) for row in self.connection.execute("SELECT name, role, created_at FROM users ORDER BY name")]

    def user_password_hash(self, name: str) -> tuple[str, str] | None:
        """``(password_hash, role)`` of an account, None if there is no such account."""
        row = self.connection.execute("SELECT password_hash, role FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row["password_hash"], row["role"])

    def has_accounts(self) -> bool:
        return self.connection.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    # -- summary -----------------------------------------------------------------
    def status(self) -> dict:
        labels = self.current_labels()
        active = self.active_model_version()
        return {
            "workspace": str(self.workspace),
            "products": self.count_products(),
            "labelled": len(labels),
            "unlabelled": self.count_products() - len(labels),
            "categories": len(set(labels.values())),
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
def _translated_errors(database_path: Path) -> Iterator[None]:
    """Storage failures as one-line errors that say what to do."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        raise CatalogError(storage_error_message(error, database_path)) from None
    except OSError as error:
        if error.errno in _DISK_ERRNOS:
            raise CatalogError(storage_error_message(error, database_path)) from None
        raise


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


def _model_row(row: sqlite3.Row) -> ModelVersion:
    # The column keeps its historical name "backbone"; it has always held an embedding key.
    return ModelVersion(id=int(row["id"]), embedding_key=row["backbone"], classes=json.loads(row["classes"]),
                        metrics=json.loads(row["metrics"]), params=json.loads(row["params"]), path=row["path"],
                        created_at=row["created_at"], is_active=bool(row["is_active"]))
