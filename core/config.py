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
# The most accurate offline backbone; ``PRODUCTLENS_BACKBONE=efficientnet_lite0`` embeds
# ~3x faster for a few points less (README, accuracy ablation). Read once, at import.
DEFAULT_BACKBONE = os.environ.get("PRODUCTLENS_BACKBONE") or "efficientnet_lite0_lite2"
# Random crops embedded per photo: training rows for labelled photos, and averaged with
# the photo for its prediction (README, accuracy ablation). ``PRODUCTLENS_VIEWS`` overrides.
DEFAULT_VIEWS = int(os.environ.get("PRODUCTLENS_VIEWS") or 4)


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def embedding_precision() -> str:
    """``float32`` (default) or ``bfloat16`` for the backbone, from ``$PRODUCTLENS_PRECISION``.

    bfloat16 is opt-in: on the 2-core benchmark machine (AVX512-BF16) it embeds 2.0x
    faster, but changes the top-1 category of 3 of 296 grocery val photos (feature
    cosine down to 0.996; benchmarks/precision.py), and the default must not change
    predictions. Without native support (AVX512-BF16 / AMX) it is emulated and slower.
    """
    value = os.environ.get("PRODUCTLENS_PRECISION") or "float32"
    if value not in ("float32", "bfloat16"):
        raise ValueError(f"PRODUCTLENS_PRECISION must be float32 or bfloat16, got {value!r}")
    return value
