"""``lqf forget``: a new run directory whose model never saw the listed training images."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from lqf.config import FitConfig, from_dict
from lqf.errors import LqfError
from lqf.explain.explainer import Explainer
from lqf.explain.runs import FORGET, check_not_core, training_split
from lqf.io import read_json, write_json
from lqf.methods.core import CORE


def forget_run(path: str, indices: list[int], out: str, *, quiet: bool = True) -> dict[str, Any]:
    """Write ``out``: the run ``path`` with the training images ``indices`` forgotten; returns its metrics."""
    from lqf.runs import RunDirectory
    from lqf.training import evaluate

    if os.path.isfile(os.path.join(out, "config.json")):
        raise LqfError(f"{out!r} already holds a run; choose another --out")
    if os.path.abspath(out) == os.path.abspath(path):
        raise LqfError("--out must be a new directory, not the run being forgotten")
    source = RunDirectory.existing(path)
    config = from_dict(FitConfig, source.read_config()["run"], source=source.file("config.json"))
    data, _, removed, still = training_split(source, config)  # still: the current images' positions
    check_not_core(source, path, still, sorted({int(i) for i in indices if 0 <= int(i) < len(still)}))
    start = time.perf_counter()
    ex = Explainer.from_run(path)
    idx = ex.check_forget(indices)
    built = time.perf_counter() - start
    start = time.perf_counter()
    model = ex.forget(idx)
    seconds = time.perf_counter() - start
    removed_now = sorted(set(removed) | {still[i] for i in idx})
    fresh = not os.path.exists(out)
    run = RunDirectory(out)
    try:
        shutil.copyfile(source.file("config.json"), run.file("config.json"))
        if source.has(CORE):  # the core it was linearized around stays (and stays unforgettable)
            shutil.copyfile(source.file(CORE), run.file(CORE))
        write_json(run.file(FORGET), {"from": os.path.abspath(path), "removed": removed_now, "indices": idx})
        run.save_model(model, {**read_json(source.file("model.json"))})
        test = evaluate(model, data.test, batch_size=256, device=config.device, quiet=quiet)
        val = evaluate(model, data.val, batch_size=256, device=config.device)
        metrics = {
            **source.read_metrics(),
            "n_train": len(still) - len(idx),
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "val_accuracy": val["accuracy"] if len(data.val) else None,
            "forgotten": len(removed_now),
            "forgotten_from": os.path.abspath(path),
            "forget_seconds": seconds,
            "forget_setup_seconds": built,
            "explain_consistency": ex.consistency,
        }
        run.write_metrics(metrics)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return metrics
