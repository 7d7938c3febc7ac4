"""Run directories for explanations: a linear run with its training split, and forgotten runs.

``lqf forget RUN --indices FILE --out NEW`` writes an ordinary run directory whose model is the
one retraining without those training images gives, plus ``forget.json``: the run it came from
and the positions, in the original training split, of every image removed so far (a forgotten
run can be forgotten again). Loading a run rebuilds its training split from its settings and
drops those positions, so ``lqf evaluate``, ``predict``, ``explain`` and ``forget`` all see the
images the model now stands for.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import torch

from lqf.errors import LqfError
from lqf.io import read_json, write_json

FORGET = "forget.json"


def training_split(run, config):
    """The run's training images: its split, rebuilt from its settings, minus forgotten positions."""
    from lqf.data import load_data

    data = load_data(
        config.data,
        image_size=config.image_size,
        shots=config.shots,
        val_per_class=config.val_per_class,
        seed=config.seed,
        max_test=config.max_test,
    )
    removed = read_json(run.file(FORGET))["removed"] if run.has(FORGET) else []
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[removed] = False
    return data, data.train.subset(keep), removed


def load_linear_run(path: str):
    """``(model, train, config, options, metrics)`` of a finished linear run (one line otherwise)."""
    from lqf.explain.explainer import linear_kind
    from lqf.runs import RunDirectory
    from lqf.runs.fit import load_run

    run = RunDirectory.existing(path)
    config, options, model, _ = load_run(path)
    linear_kind(config.method, options)
    if not run.has("metrics.json"):
        raise LqfError(
            f"run {path!r} did not finish (no metrics.json); finish it with: lqf fit --resume {path}"
        )
    _, train, _ = training_split(run, config)
    return model, train, config, options, run.read_metrics()


def read_indices(path: str) -> list[int]:
    """Training-image indices from a text file: whole numbers separated by commas, spaces or
    lines (``#`` starts a comment)."""
    if not os.path.isfile(path):
        raise LqfError(f"index file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise LqfError(f"cannot read index file {path!r} ({type(err).__name__})") from None
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            try:
                values.append(int(token))
            except ValueError:
                raise LqfError(
                    f"index file {path!r}, line {number}: {token!r} is not a whole number; "
                    "write one training-image index per line (or separated by commas)"
                ) from None
    if not values:
        raise LqfError(f"index file {path!r} holds no index")
    return values


def forget_run(path: str, indices: list[int], out: str, *, quiet: bool = True) -> dict[str, Any]:
    """Write ``out``: the run ``path`` with the training images ``indices`` forgotten; returns its metrics."""
    from lqf.explain.explainer import Explainer
    from lqf.runs import RunDirectory
    from lqf.training import evaluate

    if os.path.isfile(os.path.join(out, "config.json")):
        raise LqfError(f"{out!r} already holds a run; choose another --out")
    if os.path.abspath(out) == os.path.abspath(path):
        raise LqfError("--out must be a new directory, not the run being forgotten")
    source = RunDirectory.existing(path)
    start = time.perf_counter()
    ex = Explainer.from_run(path)
    idx = ex.check_forget(indices)
    built = time.perf_counter() - start
    start = time.perf_counter()
    model = ex.forget(idx)
    seconds = time.perf_counter() - start
    config = ex.config
    data, _, removed = training_split(source, config)
    still = [i for i in range(len(data.train)) if i not in set(removed)]  # positions of the current images
    removed_now = sorted(set(removed) | {still[i] for i in idx})
    fresh = not os.path.exists(out)
    run = RunDirectory(out)
    try:
        shutil.copyfile(source.file("config.json"), run.file("config.json"))
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
