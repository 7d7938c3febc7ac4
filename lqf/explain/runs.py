"""Run directories for explanations: a linear run with its training split, and forgotten runs.

``lqf forget RUN --indices FILE --out NEW`` (:mod:`lqf.explain.forget`) writes an ordinary run
directory whose model is the one retraining without those training images gives, plus
``forget.json``: the run it came from
and the positions, in the original training split, of every image removed so far (a forgotten
run can be forgotten again). Loading a run rebuilds its training split from its settings and
drops those positions, so ``lqf evaluate``, ``predict``, ``explain`` and ``forget`` all see the
images the model now stands for.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from lqf.errors import LqfError
from lqf.io import read_json

FORGET = "forget.json"


LINEAR = "--method lqf (squared loss) or --method linear-probe (--probe ridge)"


def linear_kind(method: str, options: Any) -> str:
    """``lqf``, ``probe`` or ``fixed-probe``; one line naming the linear methods otherwise."""
    if method == "lqf" and getattr(options, "lqf_loss", "mse") == "mse":
        return "lqf"
    if method == "linear-probe" and getattr(options, "probe", "ridge") == "ridge":
        return "probe"
    what = method + (f" with --lqf-loss {options.lqf_loss}" if method == "lqf" else "")
    what += f" with --probe {options.probe}" if method == "linear-probe" else ""
    raise LqfError(
        f"exact explanations need a model fitted by ridge regression: {LINEAR}; this run is {what}"
    )


def training_split(run, config):
    """The run's training images, rebuilt from its settings: ``(data, train, removed, positions)``.

    ``positions`` are the current images' places in the split the settings give (``train`` holds
    them in that order): all of it, minus the forgotten positions ``removed``, minus the core
    of a run fitted ``--around`` a core on the images outside it (``--around-fit rest``).
    """
    from lqf.data import load_config_data

    data = load_config_data(config)
    removed = read_json(run.file(FORGET))["removed"] if run.has(FORGET) else []
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[removed] = False
    core = read_core(run)
    if core is not None and core.get("fit") == "rest":
        keep[core["positions"]] = False
    positions = torch.nonzero(keep).reshape(-1).tolist()
    return data, data.train.subset(keep), removed, positions


def read_core(run) -> dict[str, Any] | None:
    """The ``core.json`` of a run fitted ``--around`` a fine-tuned core (``None`` otherwise)."""
    from lqf.methods.core import CORE

    return read_json(run.file(CORE)) if run.has(CORE) else None


def check_not_core(run, path: str, positions: list[int], idx: list[int]) -> None:
    """One line when any of the current training images ``idx`` shaped the core's weights."""
    core = read_core(run)
    if core is None or core.get("fit") == "rest":
        return
    inside = set(core["positions"])
    bad = [i for i in idx if positions[i] in inside]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise LqfError(
            f"training image(s) {shown} of {path!r} are in the core it was linearized around "
            f"({core['around']}): the fine-tuned weights saw them, so only fine-tuning the core again "
            "can forget them; fit the core without them (lqf fit --method finetune on data without "
            "them), then lqf fit --method lqf --around that run"
        )


def load_linear_run(path: str):
    """``(model, train, config, options, metrics)`` of a finished linear run (one line otherwise)."""
    from lqf.runs import RunDirectory
    from lqf.runs.fit import load_run

    run = RunDirectory.existing(path)
    config, options, model, _ = load_run(path)
    linear_kind(config.method, options)
    if not run.has("metrics.json"):
        raise LqfError(
            f"run {path!r} did not finish (no metrics.json); finish it with: lqf fit --resume {path}"
        )
    _, train, _, _ = training_split(run, config)
    return model, train, config, options, run.read_metrics()


def read_indices(path: str) -> list[int]:
    """Training-image indices from a text file: whole numbers separated by commas, spaces or
    lines (``#`` starts a comment); or given inline, e.g. ``3,17,40``, when no such file exists."""
    if not os.path.isfile(path):
        if re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", path):
            return [int(v) for v in path.split(",")]
        raise LqfError(f"index file {path!r} does not exist; give a file or a list like 3,17,40")
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
