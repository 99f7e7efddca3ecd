"""Import on Ray: the photos of a big folder or bucket read, checked and stored by a pool of workers.

``python -m core import --engine ray PATH_OR_URI`` lists what there is to import in this
process (names only, cheap), then hands the plain files (local paths, or pyarrow URIs
such as ``s3://bucket/prefix/…``) to Ray Data: ``map_batches`` on ``workers`` tasks, each
reading a photo with the same size limits, checking that it decodes, hashing it and
writing it to its content address in the workspace's ``images/`` folder (which every node
of a cluster must share). This process, the only one that writes the catalogue, registers
each stored photo with its label as the results stream back, so the report, the labels
and the category tree are those of the in-process import. Zip archives and CSV category
trees are read in this process (they are one file each).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from core._internal.ray_runtime import start_ray
from core.errors import CatalogError
from core.storage import images, ingest
from core.storage.catalog import Catalog, write_image_file

_COLUMNS = ("index", "sha256", "format", "extension", "width", "height", "size", "error", "fatal")


def _store_batch(batch: dict, workspace: str) -> dict:
    """One Ray task: read, check, hash and store a batch of photos; a row per photo with what was found."""
    import numpy as np

    rows = {column: [] for column in _COLUMNS}
    for index, path in zip(batch["index"], batch["path"]):
        path, found, error, fatal = str(path), None, "", False
        try:
            data = ingest.read_location(path)
            info = ingest.checked_photo(data)
            sha256 = hashlib.sha256(data).hexdigest()
            write_image_file(Path(workspace), data, sha256, info.extension)
            found = (sha256, info.format, info.extension, info.width, info.height, len(data))
        except (ingest._ItemError, images.ImageError) as problem:
            error = str(problem)
        except OSError as problem:  # the workspace refused the write (full, read-only): the import stops
            error, fatal = f"cannot store the photo in the workspace ({problem})", True
        except Exception as problem:  # one strange file must never end the batch
            error = f"could not import ({type(problem).__name__}: {problem})"
        for column, value in zip(_COLUMNS, (int(index), *(found or ("", "", "", 0, 0, 0)), error, fatal)):
            rows[column].append(value)
    return {column: np.asarray(values, dtype=object if column in ("sha256", "format", "extension", "error")
                               else None) for column, values in rows.items()}


def import_paths_on_ray(catalog: Catalog, paths: Iterable[str], label: str | None = None,
                        address: str | None = None, workers: int = 2, batch_size: int = 32,
                        progress: ingest.ProgressCallback | None = None) -> ingest.ImportReport:
    """:func:`~core.storage.ingest.import_paths` with the photos stored by ``workers`` Ray tasks (a local
    Ray, or the cluster at ``address``); the same report and catalogue rows."""
    if workers < 1 or batch_size < 1:
        raise ValueError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    items = ingest.collect_items(paths, label)
    session = ingest.ImportSession(catalog, ingest.ImportReport())
    total, done = len(items), 0

    def counted(item) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, item.name)

    remote = [index for index, item in enumerate(items) if item.path and not item.skip_reason and not item.tree]
    # What Ray has no part in (zip members, category trees, skipped or missing files) is handled here.
    for index in sorted(set(range(total)) - set(remote)):
        item = items[index]
        session.add(item, lambda label, item=item: ingest._store_here(catalog, item, label, None, session.action))
        counted(item)
    if not remote:
        return session.finish()
    ray, started_here = start_ray(address, workers)
    try:
        dataset = ray.data.from_items([{"index": index, "path": items[index].path} for index in remote],
                                      override_num_blocks=max(1, min(len(remote) // batch_size, 8 * workers)))
        stored = dataset.map_batches(_store_batch, fn_kwargs={"workspace": str(catalog.workspace)},
                                     batch_size=batch_size, batch_format="numpy", num_cpus=1, concurrency=workers)
        for batch in stored.iter_batches(batch_size=None, batch_format="numpy"):
            for row in range(len(batch["index"])):
                item = items[int(batch["index"][row])]
                session.add(item, lambda label, item=item, row=row: _register(catalog, batch, row, item, label,
                                                                               session.action))
                counted(item)
    finally:
        if started_here:
            ray.shutdown()
    return session.finish()


def _register(catalog: Catalog, batch: dict, row: int, item, label: str | None, action: str) -> tuple[int, bool]:
    """Register one photo a worker stored, or reject it with the worker's reason."""
    if batch["fatal"][row]:
        raise CatalogError(str(batch["error"][row]))
    if batch["error"][row]:
        raise ingest._ItemError(str(batch["error"][row]))
    return catalog.register_image(str(batch["sha256"][row]), item.filename or Path(item.name).name,
                                  str(batch["format"][row]), str(batch["extension"][row]), int(batch["width"][row]),
                                  int(batch["height"][row]), int(batch["size"][row]), source=item.name, label=label,
                                  action=action)
