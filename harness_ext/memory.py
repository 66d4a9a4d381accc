"""Resident memory of this process, in bytes: now and its high-water mark (stdlib only).

On Linux both come from /proc/self/status (VmRSS, VmHWM). `resource.getrusage(...).ru_maxrss` is not used
there: it survives exec, so a child process started by a larger parent reports the parent's peak as its own.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident memory now (bytes); None where the platform does not say."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes; the OS's high-water mark, never reset)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


__all__ = ["rss_bytes", "peak_rss_bytes"]
