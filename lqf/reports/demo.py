"""``lqf demo``: every registered method on one task, a table and a report.

Each method runs with its default options into ``OUT/<method>/`` (a normal
run directory); the comparison goes to ``OUT/report.md`` and
``OUT/comparison.png``. A method whose run directory already holds
``metrics.json`` is not run again, so an interrupted demo resumes.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from lqf import __version__
from lqf.config import FitConfig
from lqf.io import read_json, write_text
from lqf.methods import methods
from lqf.reports.plots import plot_comparison
from lqf.reports.tables import markdown_table, text_table

COLUMNS = ("method", "test_accuracy", "val_accuracy", "train_seconds", "peak_memory_mb")


def run_demo(
    *,
    out: str = "runs/demo",
    data: str = "fashion-mnist",
    model: str = "efficientnet_lite0",
    shots: int = 10,
    max_test: int = 2000,
    epochs: int = 15,
    seed: int = 0,
    quiet: bool = False,
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Run every method and write the report; returns one metrics dict per method."""
    from lqf.runs.fit import fit

    os.makedirs(out, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for name in methods():
        run_dir = os.path.join(out, name)
        config = FitConfig(
            model=model, data=data, method=name, shots=shots, max_test=max_test, epochs=epochs, seed=seed
        )
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):
            say(f"[demo] {name}: already done, reading {run_dir}/metrics.json")
            rows.append(read_json(os.path.join(run_dir, "metrics.json")))
            continue
        say(f"[demo] {name}: {model} on {data}, {shots} shots/class ...")
        resume = os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
        result = fit(config, out=run_dir, quiet=quiet, resume=resume)
        rows.append(result.metrics)
    total = time.perf_counter() - started
    table = [[r[c] for c in COLUMNS] for r in rows]
    say("")
    say(text_table(table, COLUMNS))
    title = f"{model} on {data}, {shots} shots/class"
    plot_comparison(rows, os.path.join(out, "comparison.png"), title=title)
    first = rows[0]
    report = f"""# lqf demo: {title}

Every method with its default options; test accuracy on {first["n_test"]} test images
(a fixed stratified subset), {first["n_train"]} training and {first["n_val"]} validation images,
{first["image_size"]} px, seed {seed}. {shots} images per class is the few-shot regime, where LQF
claims its advantage: there its exact solution (the tangent kernel, every ridge chosen on
validation) costs seconds.

{markdown_table(table, COLUMNS)}

![comparison](comparison.png)

Run directories: {", ".join(f"`{r['method']}/`" for r in rows)}.
Total time {total:.0f} s on {platform.machine()} with {torch.get_num_threads()} torch threads,
lqf {__version__}, torch {torch.__version__}.

Command: `lqf demo --out {out} --data {data} --model {model} --shots {shots} --max-test {max_test} \
--epochs {epochs} --seed {seed}`
"""
    write_text(os.path.join(out, "report.md"), report)
    say(f"\nreport: {os.path.join(out, 'report.md')}  plot: {os.path.join(out, 'comparison.png')}")
    return rows
