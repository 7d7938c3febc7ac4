"""A fine-tuned core, and linearizing around it.

``lqf fit --method finetune --core-fraction F`` fine-tunes on a seeded, stratified fraction
``F`` of the training split, the *core*, and records its positions in ``core.json``.
``lqf fit --method lqf --around RUN`` then linearizes around that run's weights (its head
included) instead of the pretrained ones and fits the training split in the linearized model:

    f_lin(x; w_core + dw) = f(x; w_core) + J(x; w_core) dw.

The images outside the core enter only the convex ridge problem, so they can be forgotten and
explained exactly (:mod:`lqf.explain`); the core's images also shaped ``w_core`` and cannot be.
The two runs must share the split (data, image size, shots, validation size, seed): the core
is then a subset of this run's training images and none of them is one of its validation or
test images.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from lqf.errors import LqfError
from lqf.io import read_json, write_json

CORE = "core.json"
#: the settings that fix a run's training, validation and test images
SPLIT_KEYS = ("data", "image_size", "shots", "val_per_class", "seed")
#: salt of the core's draw, so that it is independent of the validation and shot draws
CORE_SALT = 7919


def split_of(config) -> dict[str, Any]:
    """The settings of ``config`` (a :class:`~lqf.config.FitConfig`) that fix its split."""
    return {k: getattr(config, k) for k in SPLIT_KEYS}


def core_positions(labels: torch.Tensor, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of the core: ``round(F N)`` training images (at least one), stratified."""
    from lqf.data.splits import stratified_subsample

    labels = np.asarray(labels, dtype=np.int64)
    size = max(1, int(round(fraction * len(labels))))
    return stratified_subsample(labels, np.arange(len(labels)), size, seed=seed * 1_000_003 + CORE_SALT)


def take_core(data, fraction: float, config, run) -> tuple[Any, dict[str, Any]]:
    """``data`` with its training split cut to the core; writes ``core.json`` into ``run``."""
    positions = core_positions(data.train.labels, fraction, config.seed)
    record = {
        "fraction": fraction,
        "n_train": len(data.train),
        "positions": positions.tolist(),
        "split": split_of(config),
    }
    if run is not None:
        write_json(run.file(CORE), record)
    return replace(data, train=data.train.subset(positions)), record


def check_core_fraction(fraction: float | None) -> None:
    if fraction is not None and not 0 < fraction <= 1:
        raise LqfError(f"--core-fraction must be in (0, 1], got {fraction:g}")


def load_around(model: torch.nn.Module, path: str, config, classes: list[str]) -> dict[str, Any]:
    """Load the weights of the fine-tuning run ``path`` into ``model``; returns its core record.

    One line, before anything is written, when ``path`` is not a finished fine-tuning run of the
    same model, classes, head and split as ``config``.
    """
    from lqf.config import FitConfig, from_dict
    from lqf.runs import RunDirectory

    run = RunDirectory.existing(path)
    saved = from_dict(FitConfig, run.read_config()["run"], source=run.file("config.json"))
    if saved.method != "finetune":
        raise LqfError(
            f"--around needs a fine-tuning run (lqf fit --method finetune); "
            f"{path!r} is --method {saved.method}"
        )
    if not run.has("model.json"):
        raise LqfError(
            f"--around {path!r} did not finish (no model.json); finish it with: lqf fit --resume {path}"
        )
    if saved.model != config.model:
        raise LqfError(f"--around {path!r} fine-tuned {saved.model}, this run is --model {config.model}")
    info = read_json(run.file("model.json"))
    if list(info.get("classes", [])) != list(classes):
        raise LqfError(
            f"--around {path!r} has {info.get('num_classes')} classes "
            f"({', '.join(map(str, info.get('classes', [])[:3]))}, ...), this data has {len(classes)} "
            f"({', '.join(classes[:3])}, ...): use the data set it was fine-tuned on"
        )
    if saved.head != config.head:
        raise LqfError(
            f"--around {path!r} has --head {saved.head}, this run --head {config.head}: use the same"
        )
    mine, theirs = split_of(config), split_of(saved)
    differ = [k for k in SPLIT_KEYS if mine[k] != theirs[k]]
    if differ:
        flags = " ".join(f"--{k.replace('_', '-')} {theirs[k]}" for k in differ)
        raise LqfError(
            f"--around {path!r} was fine-tuned on another split ({', '.join(differ)} differ): its images "
            f"could be this run's validation or test images; give the same split ({flags})"
        )
    state = run.load_state()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise LqfError(f"weights in {path!r} do not fit {config.model}: {str(err).splitlines()[0]}") from None
    if run.has(CORE):
        core = read_json(run.file(CORE))
    else:  # fine-tuned on the whole training split: every image is core
        n = int(read_json(run.file("metrics.json")).get("n_train", 0)) if run.has("metrics.json") else 0
        core = {"fraction": 1.0, "n_train": n, "positions": list(range(n)), "split": theirs}
    return {**core, "around": os.path.abspath(path)}


def rest_of(data, core: dict[str, Any]):
    """``data`` with its training split cut to the images outside the core."""
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[core["positions"]] = False
    return replace(data, train=data.train.subset(keep))


def around_core(model: torch.nn.Module, path: str, fit: str, ctx, data):
    """Load the core run ``path`` into ``model`` for ``lqf --around``: ``(core, data, core_images)``,
    ``data`` cut to the images outside the core when ``fit`` is ``rest``."""
    core = load_around(model, path, ctx.config, data.classes)
    if core["n_train"] != len(data.train):
        raise LqfError(
            f"--around {path!r}: its core was drawn from {core['n_train']} training images, this "
            f"run has {len(data.train)}; fit on the same split"
        )
    core_images = data.train.subset(torch.as_tensor(core["positions"], dtype=torch.long))
    if fit == "rest":
        data = rest_of(data, core)
    ctx.extra["around"] = core["around"]
    ctx.extra["core_fraction"] = core["fraction"]
    ctx.extra["n_train"] = len(data.train)
    return core, data, core_images
