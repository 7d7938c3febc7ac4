"""What this machine has: CPU cores and memory, for checking resource flags before work starts."""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _meminfo(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def total_memory_mb() -> float | None:
    """This machine's memory in MiB (``None`` where the OS does not say)."""
    return _meminfo("MemTotal")


def available_memory_mb() -> float | None:
    """Memory available to new work right now, in MiB (``None`` where the OS does not say)."""
    return _meminfo("MemAvailable")
