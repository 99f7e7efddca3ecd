"""Write files so that a reader, or a crash, never sees half of one.

Every file ProductLens writes (photos, model versions, exports, backups, caches)
goes through :func:`atomic_path`: it is written under a temporary name in the
same folder and renamed into place only when complete, so a process killed
mid-write leaves the previous file (or none) and a ``*.tmp*`` leftover that
:meth:`core.storage.Catalog.discard_partial_files` removes. The temporary name
keeps the file's own name at its end, because some writers (Keras) choose the
format by the extension.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it into place on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``durable=False`` skips the fsync: for caches, which may be lost in a crash
    but are rebuilt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{uuid.uuid4().hex[:12]}.tmp.{path.name}")
    try:
        yield temporary
        if durable:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Sequence[bytes | memoryview],
                       durable: bool = True) -> None:
    """Write ``data`` (or its pieces, in order) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, durable) as temporary:
        with open(temporary, "wb") as handle:
            for piece in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                handle.write(piece)
