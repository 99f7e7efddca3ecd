"""Resident memory of this process (peak and current), for benchmarks and memory tests."""

from __future__ import annotations

import resource


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MB; None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """High-water mark of resident memory in MB.

    Linux's ``ru_maxrss`` survives ``exec`` and so includes the parent's memory
    at fork time; ``VmHWM`` belongs to this program alone, so it is preferred.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory right now in MB (0.0 where /proc is unavailable)."""
    return _status_mb("VmRSS") or 0.0
