"""Starting (or joining) Ray for the batch jobs that run on it: embedding and import.

Without an address Ray starts on this machine with the CPUs asked for; with one
(``ray://host:10001`` or ``host:6379``) the job joins that cluster. ProductLens's own
code travels with the job (``py_modules``), and so do the ``PRODUCTLENS_*`` settings
of this process (size limits, views), so workers follow the same rules as here.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ProductLensError


def start_ray(address: str | None, cpus: int):
    """``(ray module, started_here)``; the caller shuts Ray down when it started it."""
    try:
        import ray
    except ImportError:
        raise ProductLensError("the Ray engine needs Ray: pip install -r requirements-scale.txt") from None
    import core

    package = str(Path(core.__file__).resolve().parent)
    settings = {name: value for name, value in os.environ.items() if name.startswith("PRODUCTLENS_")}
    runtime_env = {"py_modules": [package], "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", **settings}}
    if ray.is_initialized():
        return ray, False
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        raise ProductLensError(f"could not start Ray{f' at {address}' if address else ''}: {error}") from None
    return ray, True
