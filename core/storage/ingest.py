"""Bring photos into the catalogue from files, folders, zip archives and CSV manifests.

Sources, and where a product's label comes from:

* an image file: no label (unless ``label=`` is given);
* a folder: walked recursively for image files (other files, such as a README,
  are listed as skipped); an image's label is the name of its immediate
  parent folder (the ``keras.utils.image_dataset_from_directory`` convention), except
  for images directly in the folder given, which stay unlabelled;
* a zip archive: the same rule applied to paths inside the archive. Members are
  read into memory with size caps and never extracted, so a hostile path
  (``../../etc``) cannot write anywhere; such members are rejected all the same;
* a location on a file system pyarrow reads (``s3://bucket/prefix``, ``gs://…``,
  ``hdfs://…``, ``file:///…``): a prefix is walked like a folder, one object read like a file;
* a CSV manifest with columns ``path,label`` (header optional), paths relative to
  the CSV file; a CSV with the header ``category,parent`` holds no photos but the
  category tree.

Nested folders give the category tree too: ``Fruit/Apple/Granny-Smith/x.jpg`` below the
folder imported (or inside a zip) makes Apple the parent of Granny-Smith and Fruit the
parent of Apple, unless someone already chose a parent (see
:meth:`~core.storage.Catalog.set_category_parents`).

Every item is validated by :mod:`core.storage.images`; a bad one is *rejected* with a
reason and the batch goes on. Re-importing a known photo is a *duplicate*: nothing
is stored twice, and an import label never overrides an existing label.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from core import settings
from core.errors import CatalogError, InvalidInputError
from core.storage import images
from core.storage.catalog import Catalog, clean_label

ProgressCallback = Callable[[int, int, str], None]

_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_NOT_AN_IMAGE_TYPE = "skipped: not an image file type (folders and archives import image files only)"


@dataclass(frozen=True)
class Rejected:
    name: str
    reason: str


@dataclass
class ImportReport:
    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[Rejected] = field(default_factory=list)
    labelled: int = 0
    parents_set: int = 0  # category → parent links from folder trees or a category,parent CSV
    parents_rejected: int = 0  # of those, refused (a loop, a bad name): also listed in ``rejected``
    product_ids: list[int] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    found_labels: dict[int, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.duplicates)} duplicates",
                 f"{len(self.rejected)} rejected", f"{len(self.skipped)} non-image files skipped",
                 f"{self.labelled} labels set"]
        if self.parents_set:
            parts.append(f"{self.parents_set} category parents set")
        return "imported: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "added": len(self.added), "duplicates": len(self.duplicates), "rejected": len(self.rejected),
            "skipped": len(self.skipped), "labelled": self.labelled, "parents_set": self.parents_set,
            "rejected_files": [{"name": item.name, "reason": item.reason} for item in self.rejected],
        }


@dataclass(frozen=True)
class _Item:
    name: str
    label: str | None
    read: Callable[[], bytes]
    skip_reason: str | None = None
    origin: str | None = None  # where the label came from, e.g. "manifest.csv line 7", for rejections
    filename: str | None = None  # the product's file name (default: the last part of ``name``)
    folders: tuple[str, ...] = ()  # folder names from the import's root down to the photo (the category tree)
    tree: tuple[tuple[str, str | None, str], ...] = ()  # a category,parent CSV: (category, parent, origin)
    path: str | None = None  # a plain file's path or URI, which another process can read (a Ray worker)


class _ItemError(Exception):
    """Raised by an item's reader: the item is rejected with this reason."""


def display_name(name: str | os.PathLike) -> str:
    """A printable, storable file name even when the file system gave undecodable bytes."""
    text = os.fsdecode(name) if not isinstance(name, str) else name
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_file(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        limit = settings.current().max_file_bytes
        try:
            # Non-blocking open and a check of what was opened (not of the name): a FIFO would
            # block forever and a link to /dev/zero never ends; only regular files are read.
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as error:
            raise _ItemError(f"cannot read file ({error.strerror or error})") from None
        with os.fdopen(descriptor, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise _ItemError("not a regular file (a device, pipe or socket): not read")
            if status.st_size > limit:
                raise _ItemError(f"file is {status.st_size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB "
                                 "limit (PRODUCTLENS_MAX_FILE_MB)")
            try:
                data = handle.read(limit + 1)  # a file that grows while read stops at the limit
            except OSError as error:
                raise _ItemError(f"cannot read file ({error.strerror or error})") from None
        if len(data) > limit:
            raise _ItemError(f"file is over the {limit / 2**20:.0f} MB limit (PRODUCTLENS_MAX_FILE_MB)")
        return data
    return read


def _is_ignored(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in _IGNORED_NAMES or base.startswith("._") or "__MACOSX" in name.split("/")


def _folder_items(root: Path, label: str | None) -> Iterator[_Item]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for linked in [d for d in subdirectories if (Path(directory) / d).is_symlink()]:
            # Links to folders are not followed (they can loop, or lead out of the folder given); say so.
            yield _Item(display_name(Path(directory) / linked), None, _fail(""),
                        "skipped: a link to a folder is not followed (import the folder it points to instead)")
        for file_name in sorted(files):
            if file_name.startswith(".") or _is_ignored(file_name):
                continue
            path = Path(directory) / file_name
            folders = tuple(display_name(part) for part in Path(directory).relative_to(root).parts)
            if path.suffix.lower() not in images.IMAGE_SUFFIXES:
                yield _Item(display_name(path), None, _fail(""), _NOT_AN_IMAGE_TYPE)
                continue
            yield _Item(display_name(path), label or (folders[-1] if folders else None), _read_file(path),
                        folders=() if label else folders, path=str(path))


def _zip_items(source: Path | io.BytesIO, label: str | None, name: str | None = None) -> Iterator[_Item]:
    archive_name = name or display_name(source)
    try:
        archive = zipfile.ZipFile(source)
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        yield _Item(archive_name, None, _fail(f"not a readable zip archive ({error})"))
        return
    if len(members) > settings.current().max_zip_entries:
        yield _Item(archive_name, None, _fail(
            f"archive has {len(members)} entries, over the {settings.current().max_zip_entries} limit "
            "(PRODUCTLENS_MAX_ZIP_ENTRIES)"))
        return
    declared = sum(member.file_size for member in members)
    if declared > settings.current().max_zip_bytes:
        yield _Item(archive_name, None, _fail(
            f"archive unpacks to {declared / 2**20:.0f} MB, over the {settings.current().max_zip_bytes / 2**20:.0f} MB "
            "limit (PRODUCTLENS_MAX_ZIP_MB); possibly a zip bomb"))
        return
    for member in members:
        if member.is_dir() or _is_ignored(member.filename):
            continue
        name = f"{archive_name}:{member.filename}"
        posix = PurePosixPath(member.filename.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
            yield _Item(name, None, _fail("unsafe path inside archive (absolute or '..'); not imported"))
            continue
        if posix.suffix.lower() not in images.IMAGE_SUFFIXES:
            yield _Item(name, None, _fail(""), _NOT_AN_IMAGE_TYPE)
            continue
        member_label = label or (posix.parent.name if len(posix.parts) > 1 else None)
        yield _Item(name, member_label, _read_member(archive, member), filename=posix.name,
                    folders=() if label else posix.parent.parts)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        limit = settings.current().max_file_bytes
        if member.file_size > limit:
            raise _ItemError(f"file is {member.file_size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit "
                             "(PRODUCTLENS_MAX_FILE_MB)")
        try:
            with archive.open(member) as stream:
                # The header's size can lie; never read more than the limit.
                data = stream.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as error:
            raise _ItemError(f"cannot read from archive ({error})") from None
        except Exception as error:  # zlib.error and friends
            raise _ItemError(f"cannot read from archive ({error})") from None
        if len(data) > limit:
            raise _ItemError(f"file unpacks past the {limit / 2**20:.0f} MB limit; possibly a zip bomb")
        return data
    return read


def _manifest_items(path: Path, label: str | None) -> Iterator[_Item]:
    manifest_name = display_name(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        yield _Item(manifest_name, None, _fail(f"cannot read CSV manifest ({error})"))
        return
    rows = list(csv.reader(io.StringIO(text)))
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["category", "parent"]:
        # A category tree, not photos: one category per line, its parent (empty: a root).
        tree = tuple((row[0], row[1] if len(row) > 1 else None, f"{path.name} line {line_number}")
                     for line_number, row in enumerate(rows[1:], start=2) if row and row[0].strip())
        yield _Item(manifest_name, None, _fail(""), tree=tree)
        return
    if rows and [cell.strip().lower() for cell in rows[0][:2]] in (["path", "label"], ["path"]):
        rows = rows[1:]
    for line_number, row in enumerate(rows, start=2):
        if not row or not row[0].strip():
            continue
        item_path = Path(row[0].strip())
        if not item_path.is_absolute():
            item_path = path.parent / item_path
        row_label = label or (row[1].strip() if len(row) > 1 and row[1].strip() else None)
        name = display_name(item_path)
        if not item_path.is_file():
            yield _Item(name, None, _fail(f"listed in {path.name} line {line_number} but not found"))
            continue
        yield _Item(name, row_label, _read_file(item_path), origin=f"{path.name} line {line_number}",
                    path=str(item_path))


def _fail(reason: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise _ItemError(reason)
    return read


def _path_items(path: Path, label: str | None, name: str | None = None) -> Iterator[_Item]:
    name = name or display_name(path)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        yield from _zip_items(path, label)
    elif suffix == ".csv":
        yield from _manifest_items(path, label)
    else:
        yield _Item(name, label, _read_file(path), path=str(path))


def is_uri(path: str | os.PathLike) -> bool:
    """``s3://bucket/prefix``, ``gs://…``, ``file:///…``: a location for pyarrow's file systems."""
    return isinstance(path, str) and "://" in path and not os.path.lexists(path)


def read_uri(uri: str, limit: int | None = None) -> bytes:
    """The bytes of one file at a pyarrow file-system URI, refusing files over ``limit``."""
    from pyarrow import fs

    limit = settings.current().max_file_bytes if limit is None else limit
    try:
        filesystem, location = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(location) as handle:
            if handle.size() > limit:
                raise _ItemError(f"file is {handle.size() / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB "
                                 "limit (PRODUCTLENS_MAX_FILE_MB)")
            return handle.read(limit + 1)
    except (OSError, ValueError) as error:  # pyarrow's errors derive from these
        raise _ItemError(f"cannot read file ({error})") from None


def _uri_items(uri: str, label: str | None) -> Iterator[_Item]:
    """A bucket prefix (or one object) read through pyarrow: the same rules as a local folder or file."""
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as error:
        yield _Item(uri, None, _fail(f"cannot open it ({error})"))
        return
    scheme = uri.split("://", 1)[0]

    def located(path: str) -> str:
        return f"{scheme}://{path}" if scheme != "file" else f"file://{path if path.startswith('/') else '/' + path}"

    if info.type == fs.FileType.File:
        yield _Item(uri, label, lambda: read_uri(uri), path=uri)
        return
    if info.type != fs.FileType.Directory:
        yield _Item(uri, None, _fail("no such file or folder"))
        return
    prefix = root.rstrip("/") + "/"
    for entry in sorted((entry for entry in found if entry.type == fs.FileType.File), key=lambda e: e.path):
        parts = tuple(entry.path[len(prefix):].split("/")) if entry.path.startswith(prefix) else (entry.base_name,)
        if any(part.startswith(".") for part in parts) or _is_ignored("/".join(parts)):
            continue
        name, folders = located(entry.path), parts[:-1]
        if PurePosixPath(parts[-1]).suffix.lower() not in images.IMAGE_SUFFIXES:
            yield _Item(name, None, _fail(""), _NOT_AN_IMAGE_TYPE)
            continue
        yield _Item(name, label or (folders[-1] if folders else None), lambda name=name: read_uri(name),
                    filename=parts[-1], folders=() if label else folders, path=name)


def collect_items(paths: Iterable[str | os.PathLike], label: str | None = None) -> list[_Item]:
    """Expand the user's paths into the list of files to import (cheap: nothing is decoded)."""
    items: list[_Item] = []
    for raw in paths:
        if is_uri(raw):
            items.extend(_uri_items(raw, label))
            continue
        path = Path(raw)
        if path.is_dir():
            items.extend(_folder_items(path, label))
        elif path.is_file():
            items.extend(_path_items(path, label))
        elif os.path.lexists(path):  # a pipe, device or dangling link: its reader says why it is refused
            items.append(_Item(display_name(path), label, _read_file(path)))
        else:
            items.append(_Item(display_name(path), None, _fail("no such file or folder")))
    return items


def import_bytes(catalog: Catalog, name: str, data: bytes, label: str | None = None,
                 report: ImportReport | None = None, source: str | None = None) -> ImportReport:
    """Import one in-memory file (an upload); zip archives are expanded."""
    report = report if report is not None else ImportReport()
    if name.lower().endswith(".zip"):
        return _run(catalog, list(_zip_items(io.BytesIO(data), label, name=name)), report, None)
    return _run(catalog, [_Item(name, label, lambda: data)], report, None, source=source)


def import_paths(catalog: Catalog, paths: Iterable[str | os.PathLike], label: str | None = None,
                 progress: ProgressCallback | None = None, apply_labels: bool = True) -> ImportReport:
    """Import everything under ``paths``; see the module docstring for the rules.

    With ``apply_labels=False`` the labels found (folder names, manifest) are
    only reported in ``report.found_labels``, not stored (held-out test sets).
    """
    return _run(catalog, collect_items(paths, label), ImportReport(), progress, apply_labels=apply_labels)


def _checked_label(item: _Item) -> str | None:
    try:
        return clean_label(item.label)
    except InvalidInputError as error:
        where = f" ({item.origin})" if item.origin else ""
        raise _ItemError(f"label not accepted{where}: {error}") from None


def _run(catalog: Catalog, items: list[_Item], report: ImportReport, progress: ProgressCallback | None,
         source: str | None = None, apply_labels: bool = True) -> ImportReport:
    session = ImportSession(catalog, report, apply_labels)
    total = len(items)
    for index, item in enumerate(items, start=1):
        session.add(item, lambda label, item=item: _store_here(catalog, item, label, source, session.action))
        if progress:
            progress(index, total, item.name)
    return session.finish()


def read_location(path: str) -> bytes:
    """A plain file's bytes from its local path or pyarrow URI (``_Item.path``: what a Ray worker is
    handed), with the same checks and size limits as an import here."""
    return read_uri(path) if is_uri(path) else _read_file(Path(path))()


def checked_photo(data: bytes) -> images.ImageInfo:
    """What an import needs to know of a file's bytes, or the reason they are rejected."""
    if not data:
        raise _ItemError("empty file (0 bytes)")
    return images.validate(data)


def _store_here(catalog: Catalog, item: _Item, label: str | None, source: str | None,
                action: str) -> tuple[int, bool]:
    """Read, validate and store one item in this process: ``(product_id, created)``."""
    data = item.read()
    info = checked_photo(data)
    return catalog.add_image(data, filename=item.filename or Path(item.name).name, image_format=info.format,
                             extension=info.extension, width=info.width, height=info.height,
                             source=source or item.name, label=label, action=action)


class ImportSession:
    """The bookkeeping of one import, wherever its photos are stored (here, or by Ray workers).

    :meth:`add` takes one item and a ``store(label) -> (product_id, created)`` that stores it,
    raising ``_ItemError`` (or an image error) to reject it; :meth:`finish` sets the
    labels found for photos that were already products and the folder trees' category parents.
    """

    def __init__(self, catalog: Catalog, report: ImportReport, apply_labels: bool = True):
        self.catalog, self.report, self.apply_labels = catalog, report, apply_labels
        self.action = uuid.uuid4().hex
        self.pending_labels: list[tuple[int, str]] = []  # labels for photos that were already products
        self.tree: dict[str, tuple[str, str]] = {}  # category -> (parent, origin), first seen wins

    def add(self, item: _Item, store: Callable[[str | None], tuple[int, bool]]) -> None:
        report, name = self.report, item.name
        if item.tree:
            if self.apply_labels:
                _apply_tree(self.catalog, item.tree, report, author=None, only_if_missing=False)
            return
        if item.skip_reason:
            report.skipped.append(Rejected(name, item.skip_reason))
            return
        try:
            # A bad label rejects its own item, with where it came from; the rest of the batch goes on.
            label = _checked_label(item)
            product_id, created = store(label if self.apply_labels else None)
        except (_ItemError, images.ImageError) as error:
            report.rejected.append(Rejected(name, str(error)))
        except CatalogError as error:
            # The workspace itself failed (disk full, read-only): stop here, say how far the import got.
            _apply_pending(self.catalog, self.pending_labels, report, self.action)
            raise CatalogError(f"import stopped at {name} after storing {len(report.product_ids)} photos "
                               f"(each with its label): {error}") from None
        except Exception as error:  # one strange file must never end the batch
            report.rejected.append(Rejected(name, f"could not import ({type(error).__name__}: {error})"))
        else:
            (report.added.append(product_id) if created else report.duplicates.append((name, product_id)))
            report.product_ids.append(product_id)
            report.names[product_id] = name
            if label and self.apply_labels and item.folders:
                for parent, child in zip(item.folders, item.folders[1:]):
                    self.tree.setdefault(child, (parent, name))
            if label:
                report.found_labels[product_id] = label
                if created and self.apply_labels:
                    report.labelled += 1
                elif not created:
                    self.pending_labels.append((product_id, label))

    def finish(self) -> ImportReport:
        if self.apply_labels:
            _apply_pending(self.catalog, self.pending_labels, self.report, self.action)
            # Folder trees never override a parent someone chose (as import labels never override a person's).
            _apply_tree(self.catalog, [(child, parent, origin) for child, (parent, origin) in self.tree.items()],
                        self.report, author=None, only_if_missing=True)
        return self.report


def _apply_tree(catalog: Catalog, tree, report: ImportReport, author: str | None, only_if_missing: bool) -> None:
    """Set category parents one by one: a bad name or a loop skips its own line, named, and the rest goes on."""
    for category, parent, origin in tree:
        try:
            report.parents_set += catalog.set_category_parents([(category, parent)], author=author,
                                                               only_if_missing=only_if_missing)
        except InvalidInputError as error:
            report.rejected.append(Rejected(origin, f"category parent not set: {error}"))
            report.parents_rejected += 1


def _apply_pending(catalog: Catalog, pending: list[tuple[int, str]], report: ImportReport, action: str) -> None:
    """Labels found for photos that were already products: set only where nobody labelled them yet."""
    if pending:
        report.labelled += catalog.set_labels(pending, source="import", only_if_unlabelled=True, action=action)
        pending.clear()
