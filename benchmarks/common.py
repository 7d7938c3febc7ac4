"""What the benchmark scripts share: cached ``lqf fit`` runs, summaries, the hardware record."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fit_run(
    out: str, flags: list[str], *, lock: str | None = None, allow_failure: bool = False
) -> tuple[dict | None, bool]:
    """``python -m lqf fit --out OUT FLAGS`` in a subprocess, unless ``OUT`` already finished.

    A run directory without ``metrics.json`` (an interrupted run) is removed and run again, so
    a benchmark resumes where it stopped. ``lock``: a file for ``flock``, so that CPU-heavy runs
    of several scripts on one machine go one at a time. The wall time of a run trained here is
    kept in ``OUT/bench_wall.json``, with the hardware it ran on. Returns the run's metrics (with
    ``wall_seconds`` and ``hardware`` when known) and whether it was trained by this call. With
    ``allow_failure`` a run that exits with an error (e.g. a diverging learning rate in a
    selection grid) gives ``None`` and leaves ``OUT/failed.txt`` with its last line of output,
    so that it is not retried.
    """
    metrics = os.path.join(out, "metrics.json")
    failed = os.path.join(out, "failed.txt")
    trained = False
    if allow_failure and os.path.isfile(failed):
        return None, False
    if not os.path.isfile(metrics):
        if os.path.isdir(out):
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "lqf", "fit", "--quiet", "--out", out, *flags]
        if lock:
            cmd = ["flock", lock, *cmd]
        print("$", " ".join(cmd), flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0 and not allow_failure:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        if proc.returncode != 0:
            os.makedirs(out, exist_ok=True)
            last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
            with open(failed, "w") as handle:
                handle.write(last[0] + "\n")
            return None, True
        with open(os.path.join(out, "bench_wall.json"), "w") as handle:
            json.dump({"wall_seconds": time.perf_counter() - start, "hardware": hardware()}, handle)
        trained = True
    with open(metrics) as handle:
        result = json.load(handle)
    wall = os.path.join(out, "bench_wall.json")
    if os.path.isfile(wall):
        with open(wall) as handle:
            recorded = json.load(handle)
        result["wall_seconds"] = recorded["wall_seconds"]
        if "hardware" in recorded:
            result["hardware"] = recorded["hardware"]
    return result, trained


def summarise(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def hardware() -> dict:
    """CPU model, core count, torch threads and versions, for every results file."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }
