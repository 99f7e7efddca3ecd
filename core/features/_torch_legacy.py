"""Read PyTorch's legacy (non-zip) ``torch.save`` files without importing torch.

The legacy format is a concatenation of pickles: a magic number, a protocol
version, a system-info dict, the object itself (tensors refer to storages by
*persistent id*), the list of storage keys, and then for each storage its raw
bytes prefixed by an int64 element count.

Pickles can run arbitrary code, so the object pickle is read with an
unpickler that resolves only the few globals a state dict needs and raises
:class:`UnsafePickleError` for anything else.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_SUPPORTED_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a Python global that a plain state dict never needs."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _PendingTensor:
    """A tensor whose storage bytes come after the object pickle in the file."""

    def __init__(self, storage_key, storage_offset, size, stride):
        self.storage_key = storage_key
        self.storage_offset = int(storage_offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _PendingTensor(storage, storage_offset, size, stride)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load '{module}.{name}': a weights file may only contain "
                "tensors and dicts (the file may be corrupt or malicious)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r} in weights file")
        _, storage_type, key, _location, num_elements = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        self._storages.setdefault(str(key), (storage_type.dtype, int(num_elements)))
        return str(key)


def _safe_load_plain(file: BinaryIO):
    """Load one header pickle (magic, version, sys info) allowing no globals at all."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise UnsafePickleError(f"refusing to load '{module}.{name}' from a weights file header")

    return _NoGlobals(file).load()


def _check_view(name: str, tensor: _PendingTensor, available: int) -> None:
    """Refuse a view that reaches outside its storage: ``as_strided`` would read (or crash on) other memory."""
    if tensor.storage_offset < 0 or any(n < 0 for n in tensor.size) or any(s < 0 for s in tensor.stride):
        raise ValueError(f"tensor {name!r} has a negative offset, size or stride")
    if len(tensor.size) != len(tensor.stride):
        raise ValueError(f"tensor {name!r} has {len(tensor.size)} sizes but {len(tensor.stride)} strides")
    if 0 in tensor.size:
        return
    last = tensor.storage_offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= available:
        raise ValueError(f"tensor {name!r} reaches element {last} of a storage of {available}: damaged or "
                         "crafted weights file")


def load_legacy_state_dict(path_or_file) -> "collections.OrderedDict[str, np.ndarray]":
    """Return the state dict stored in a legacy ``torch.save`` file as NumPy arrays.

    Raises:
        UnsafePickleError: the file asks for globals other than tensors and dicts.
        ValueError: the file is not a legacy torch file or is truncated.
    """
    if isinstance(path_or_file, (str, bytes)) or hasattr(path_or_file, "__fspath__"):
        with open(path_or_file, "rb") as file:
            return load_legacy_state_dict(io.BytesIO(file.read()))
    file = path_or_file
    try:
        magic = _safe_load_plain(file)
    except UnsafePickleError:
        raise
    except Exception as error:
        raise ValueError(f"not a legacy PyTorch weights file ({error})") from None
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError(
            "not a legacy PyTorch weights file (zip-format files from torch >= 1.6 are not supported)"
        )
    protocol_version = _safe_load_plain(file)
    if protocol_version != _SUPPORTED_PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy protocol version {protocol_version}")
    sys_info = _safe_load_plain(file)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise ValueError("only little-endian weights files are supported")

    storages: dict = {}
    state = _RestrictedUnpickler(file, storages).load()
    storage_keys = _safe_load_plain(file)

    storage_data = {}
    for key in storage_keys:
        dtype, expected = storages[str(key)]
        header = file.read(8)
        if len(header) != 8:
            raise ValueError("weights file is truncated")
        (num_elements,) = struct.unpack("<q", header)
        if num_elements != expected:
            raise ValueError(f"storage {key} has {num_elements} elements, expected {expected}")
        raw = file.read(num_elements * dtype.itemsize)
        if len(raw) != num_elements * dtype.itemsize:
            raise ValueError("weights file is truncated")
        storage_data[str(key)] = np.frombuffer(raw, dtype=dtype)

    if not isinstance(state, dict):
        raise ValueError("weights file does not contain a state dict")
    result = collections.OrderedDict()
    for name, value in state.items():
        if not isinstance(value, _PendingTensor):
            continue
        flat = storage_data.get(value.storage_key)
        if flat is None:
            raise ValueError(f"tensor {name!r} refers to a storage the file does not hold")
        _check_view(name, value, len(flat))
        array = np.lib.stride_tricks.as_strided(
            flat[value.storage_offset :],
            shape=value.size,
            strides=tuple(s * flat.itemsize for s in value.stride),
        )
        result[name] = np.array(array)  # copy: own memory, contiguous
    return result
