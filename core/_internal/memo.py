"""Remember the last few results of a costly computation that depends on arrays only.

A retrain after a few corrections fits on the same labelled products' vectors as the
one before: what does not depend on the labels (the series of near-identical shots,
the principal axes of the novelty detector's held-out folds) comes out the same, so
:class:`ArrayMemo` returns it again instead of computing it. Keys are a digest of the
arrays' bytes, shapes and dtypes plus the caller's parameters; results are made
read-only so that no caller can change what the next one gets.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np

Result = TypeVar("Result")


def digest(arrays: Sequence[np.ndarray]) -> bytes:
    """A 16-byte digest of the arrays' contents, shapes and dtypes."""
    hasher = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(memoryview(array).cast("B"))
    return hasher.digest()


def _read_only(value):
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _read_only(item)
    return value


class ArrayMemo:
    """The last ``entries`` results of ``compute``, keyed by the arrays and parameters they came from."""

    def __init__(self, entries: int = 4):
        if entries < 1:
            raise ValueError(f"entries must be at least 1, got {entries}")
        self.entries = entries
        self._results: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, arrays: Sequence[np.ndarray], parameters: Hashable, compute: Callable[[], Result]) -> Result:
        key = (digest(arrays), parameters)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        # Computed outside the lock: two threads may both compute once, never block each other.
        value = _read_only(compute())
        with self._lock:
            self._results[key] = value
            while len(self._results) > self.entries:
                self._results.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._results.clear()
