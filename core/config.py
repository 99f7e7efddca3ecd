"""Where ProductLens keeps things, and the limits it enforces.

Every setting has a sensible default and can be overridden by an environment
variable (``PRODUCTLENS_*``), so the app, the CLI and the tests agree on one
source of truth. Limits are read at call time so a test or a long-running app can
change them without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WORKSPACE = "workspace"
DEFAULT_BACKBONE = "efficientnet_lite0"


def workspace_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The workspace: ``explicit`` if given, else ``$PRODUCTLENS_WORKSPACE``, else ``./workspace``."""
    return Path(explicit or os.environ.get("PRODUCTLENS_WORKSPACE") or DEFAULT_WORKSPACE).expanduser()


def cache_dir() -> Path:
    """Converted backbone weights: ``$PRODUCTLENS_CACHE``, else ``$XDG_CACHE_HOME/productlens``."""
    if os.environ.get("PRODUCTLENS_CACHE"):
        return Path(os.environ["PRODUCTLENS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "productlens"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def max_file_bytes() -> int:
    """Largest single image file accepted (``PRODUCTLENS_MAX_FILE_MB``, default 50 MB)."""
    return _int_env("PRODUCTLENS_MAX_FILE_MB", 50) * 1024 * 1024


def max_pixels() -> int:
    """Largest image accepted, in pixels (``PRODUCTLENS_MAX_MEGAPIXELS``, default 64 MP)."""
    return _int_env("PRODUCTLENS_MAX_MEGAPIXELS", 64) * 1_000_000


def max_zip_bytes() -> int:
    """Largest total uncompressed size of a zip archive (``PRODUCTLENS_MAX_ZIP_MB``, default 2048 MB)."""
    return _int_env("PRODUCTLENS_MAX_ZIP_MB", 2048) * 1024 * 1024


def max_zip_entries() -> int:
    """Most members read from one zip archive (``PRODUCTLENS_MAX_ZIP_ENTRIES``, default 100,000)."""
    return _int_env("PRODUCTLENS_MAX_ZIP_ENTRIES", 100_000)


def embedding_batch_size() -> int:
    """Photos per forward pass: ``$PRODUCTLENS_BATCH_SIZE``, else 8 on a CPU, 64 with a GPU.

    On CPUs small batches keep each layer's activations in cache: batch 8 embeds
    ~20% faster than 32 on the 2-core benchmark machine (benchmarks/throughput.py);
    GPUs want large batches.
    """
    value = os.environ.get("PRODUCTLENS_BATCH_SIZE")
    if value:
        return max(1, int(value))
    import tensorflow as tf

    return 64 if tf.config.list_physical_devices("GPU") else 8
