"""``lqf compare``: finished runs side by side.

One row per run directory: its key metrics, plus every setting whose value differs between
the runs, so the table shows what changed: a run setting when it differs, a method's option
only when it differs between the runs of that method (another method has no such option, which
is no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

from lqf.errors import LqfError
from lqf.reports.tables import markdown_table, text_table
from lqf.runs import RunDirectory

METRICS = (
    "method",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_ece",
    "val_accuracy",
    "train_seconds",
    "peak_memory_mb",
)


def _settings(run: RunDirectory) -> tuple[dict, dict]:
    saved = run.read_config()
    return saved.get("run", {}), saved.get("method_options", {})


def compare_runs(paths: Sequence[str], *, markdown: bool = False) -> str:
    """A table of the runs at ``paths`` (metrics, then the settings that differ)."""
    runs = [RunDirectory.existing(p) for p in paths]
    unfinished = [r.path for r in runs if not r.has("metrics.json")]
    if unfinished:
        raise LqfError(
            f"run {unfinished[0]!r} has no metrics.json (not finished); "
            f"finish it with: lqf fit --resume {unfinished[0]}"
        )
    pairs = [_settings(r) for r in runs]
    run_keys = sorted({k for r, _ in pairs for k in r} - {"method"})
    differing = [k for k in run_keys if len({repr(r.get(k)) for r, _ in pairs}) > 1]
    option_keys = sorted({k for _, o in pairs for k in o} - set(run_keys))
    for key in option_keys:  # compared only between the runs whose method has the option
        values = {repr(o[key]) for _, o in pairs if key in o}
        if len(values) > 1:
            differing.append(key)
    header = ["run", *METRICS, *differing]
    rows = []
    for run, (r, o) in zip(runs, pairs, strict=True):
        metrics = run.read_metrics()
        s = {**r, **o}
        rows.append([run.path, *(metrics.get(m) for m in METRICS), *(s.get(k, "") for k in differing)])
    return (markdown_table if markdown else text_table)(rows, header)
