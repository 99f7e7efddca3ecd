"""Every setting ProductLens reads from its environment, in one object.

:func:`current` reads the ``PRODUCTLENS_*`` variables *when it is called* and
returns a frozen :class:`Settings`, so the app, the CLI and the tests agree on
one source of truth, and a test or a long-running app can change a limit
without a restart or a re-import. Defaults are chosen for a laptop; the README's
"Limits" and "Backbones" sections list each variable. Bad values are reported as
:class:`~core.errors.InvalidInputError` naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidInputError

DEFAULT_WORKSPACE = "workspace"
# The most accurate offline backbone (README, accuracy ablation).
DEFAULT_BACKBONE = "efficientnet_lite0_lite2"
DEFAULT_VIEWS = 4
PRECISIONS = ("float32", "bfloat16", "int8")
INT8_RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment's settings (see :func:`current`)."""

    workspace: Path
    cache: Path
    backbone: str = DEFAULT_BACKBONE
    views: int = DEFAULT_VIEWS
    # The photo's mirror image as one more pass (features averaged): off since stop 28, when the
    # cross-validation showed it adds nothing once the crop views (mirrored at random) are averaged in.
    mirror: bool = False
    batch_size: int | None = None  # None: chosen per machine, see embedding_batch_size()
    precision: str | None = None  # None: chosen per machine, see embedding_precision()
    int8_runtime: str | None = None  # None: chosen per machine, see int8_runtime()
    max_file_bytes: int = 50 * 2**20
    max_pixels: int = 64_000_000
    max_zip_bytes: int = 2048 * 2**20
    max_zip_entries: int = 100_000
    max_restore_bytes: int = 100 * 2**30


def _int(name: str, default: int, minimum: int = 0) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(float(value))
    except ValueError:
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if number < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def _cache_dir() -> Path:
    if os.environ.get("PRODUCTLENS_CACHE"):
        return Path(os.environ["PRODUCTLENS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "productlens"


def current() -> Settings:
    """The settings in force now, read from the environment."""
    precision = os.environ.get("PRODUCTLENS_PRECISION") or None
    if precision is not None and precision not in PRECISIONS:
        raise InvalidInputError(f"PRODUCTLENS_PRECISION must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    int8_runtime = os.environ.get("PRODUCTLENS_INT8_RUNTIME") or None
    if int8_runtime is not None and int8_runtime not in INT8_RUNTIMES:
        raise InvalidInputError(f"PRODUCTLENS_INT8_RUNTIME must be one of {', '.join(INT8_RUNTIMES)}, "
                                f"got {int8_runtime!r}")
    batch_size = _int("PRODUCTLENS_BATCH_SIZE", 0, minimum=0)
    return Settings(
        workspace=Path(os.environ.get("PRODUCTLENS_WORKSPACE") or DEFAULT_WORKSPACE).expanduser(),
        cache=_cache_dir(),
        backbone=os.environ.get("PRODUCTLENS_BACKBONE") or DEFAULT_BACKBONE,
        views=_int("PRODUCTLENS_VIEWS", DEFAULT_VIEWS),
        mirror=bool(_int("PRODUCTLENS_MIRROR", 0)),
        batch_size=batch_size or None,
        precision=precision,
        int8_runtime=int8_runtime,
        max_file_bytes=_int("PRODUCTLENS_MAX_FILE_MB", 50) * 2**20,
        max_pixels=_int("PRODUCTLENS_MAX_MEGAPIXELS", 64) * 1_000_000,
        max_zip_bytes=_int("PRODUCTLENS_MAX_ZIP_MB", 2048) * 2**20,
        max_zip_entries=_int("PRODUCTLENS_MAX_ZIP_ENTRIES", 100_000),
        max_restore_bytes=_int("PRODUCTLENS_MAX_RESTORE_MB", 100 * 1024) * 2**20,
    )


def workspace_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The workspace: ``explicit`` if given, else ``$PRODUCTLENS_WORKSPACE``, else ``./workspace``."""
    return Path(explicit).expanduser() if explicit else current().workspace


def cache_dir() -> Path:
    """Converted backbone weights and numba kernels: ``$PRODUCTLENS_CACHE``, else ``$XDG_CACHE_HOME/productlens``."""
    return _cache_dir()


def embedding_batch_size() -> int:
    """Photos per forward pass: ``$PRODUCTLENS_BATCH_SIZE``, else 8 on a CPU, 64 with a GPU.

    On CPUs small batches keep each layer's activations in cache; GPUs want large
    batches (benchmarks/throughput.py measures both).
    """
    configured = current().batch_size
    if configured:
        return configured
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
    """Arithmetic of the backbone: ``$PRODUCTLENS_PRECISION``, else int8 on a CPU, float32 with a GPU.

    int8 (:mod:`core.features.quantized`, ONNX Runtime) is as accurate as float32 on grocery val
    at a fraction of the cost on a CPU (README, benchmarks/precision.py); it runs on the CPU only,
    so a machine with a GPU keeps TensorFlow's float32. bfloat16 is opt-in: it changes some
    top-1 predictions, and without native support (AVX512-BF16 / AMX) it is emulated and slower.
    """
    configured = current().precision
    if configured:
        return configured
    import tensorflow as tf

    return "float32" if tf.config.list_physical_devices("GPU") else "int8"


def int8_runtime() -> str:
    """What runs the 8-bit graph: ``$PRODUCTLENS_INT8_RUNTIME``, else OpenVINO on a CPU with AMX, else ONNX Runtime.

    Both run the same quantized graph and give the same features up to rounding. ONNX
    Runtime's 8-bit convolutions use AVX512-VNNI / AVX-VNNI but not the matrix units (AMX)
    of recent Xeons, which OpenVINO's do (README, ``benchmarks/precision.py``); other CPUs
    keep ONNX Runtime, the runtime measured on them. Without OpenVINO installed it is ONNX Runtime.
    """
    configured = current().int8_runtime
    if configured:
        return configured
    if "amx_int8" not in cpu_flags():
        return "onnxruntime"
    from importlib.util import find_spec

    return "openvino" if find_spec("openvino") is not None else "onnxruntime"
