"""Shared by the benchmarks: where results go, and 95% intervals for accuracies.

Every benchmark ends with :func:`write_result`, which stores a small JSON file in
``benchmarks/results/<name>.json`` (committed; the embedded workspaces beside them
are not) with the machine and commit it was measured on. ``benchmarks/report.py``
builds every README table from these files, so no number is copied by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: honest for small ``trials`` and near 0 or 1."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(correct: int, total: int) -> dict:
    """``{"value", "correct", "n", "low", "high"}``: an accuracy with its 95% Wilson interval."""
    low, high = wilson_interval(int(correct), int(total))
    return {"value": round(correct / total, 4) if total else None, "correct": int(correct), "n": int(total),
            "low": round(low, 4), "high": round(high, 4)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_result(name: str, result: dict) -> Path:
    """Store ``result`` as ``benchmarks/results/<name>.json`` with when, where and on which commit."""
    import tensorflow as tf

    # The metadata comes last, so a result's own keys can never replace it.
    record = {**result, "benchmark": name,
              "measured_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": _commit(), "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                                               "arch": platform.machine(), "tensorflow": tf.__version__}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
