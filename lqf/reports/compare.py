"""``lqf compare``: finished runs side by side.

One row per run directory: its key metrics, plus every setting (run or method
option) whose value differs between the runs, so the table shows what changed.
"""

from __future__ import annotations

from collections.abc import Sequence

from lqf.errors import LqfError
from lqf.reports.tables import markdown_table, text_table
from lqf.runs import RunDirectory

METRICS = ("method", "test_accuracy", "val_accuracy", "train_seconds", "peak_memory_mb")


def _settings(run: RunDirectory) -> dict:
    saved = run.read_config()
    return {**saved.get("run", {}), **saved.get("method_options", {})}


def compare_runs(paths: Sequence[str], *, markdown: bool = False) -> str:
    """A table of the runs at ``paths`` (metrics, then the settings that differ)."""
    runs = [RunDirectory.existing(p) for p in paths]
    unfinished = [r.path for r in runs if not r.has("metrics.json")]
    if unfinished:
        raise LqfError(
            f"run {unfinished[0]!r} has no metrics.json (not finished); "
            f"finish it with: lqf fit --resume {unfinished[0]}"
        )
    settings = [_settings(r) for r in runs]
    keys = sorted({k for s in settings for k in s} - {"method"})
    differing = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
    header = ["run", *METRICS, *differing]
    rows = []
    for run, s in zip(runs, settings, strict=True):
        metrics = run.read_metrics()
        rows.append([run.path, *(metrics.get(m) for m in METRICS), *(s.get(k) for k in differing)])
    return (markdown_table if markdown else text_table)(rows, header)
