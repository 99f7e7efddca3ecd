"""Read the next piece while this one is worked on: a chunked job over vectors on disk then waits for
the disk only while it has nothing else to do (from a cold file cache, reading is mostly waiting)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Read = TypeVar("Read")


def read_ahead(items: Iterable[Item], read: Callable[[Item], Read], finish: Callable[[], None] | None = None
               ) -> Iterator[tuple[Item, Read]]:
    """Yield ``(item, read(item))`` in order, ``read`` running one item ahead on a thread of its own;
    ``finish`` runs on that thread at the end (e.g. to close its database connection)."""
    items = list(items)
    with ThreadPoolExecutor(1, thread_name_prefix="productlens-read") as reader:
        pending = reader.submit(read, items[0]) if items else None
        for number, item in enumerate(items):
            result = pending.result()
            pending = reader.submit(read, items[number + 1]) if number + 1 < len(items) else None
            yield item, result
        if finish is not None:
            reader.submit(finish)
