"""Standard (non-linear) fine-tuning: cross-entropy, AdamW or SGD, cosine schedule.

The pretrained backbone and a new linear head are trained jointly by
mini-batch gradient descent on the cross-entropy loss. Options choose which
units are trained (``--unfreeze``: all, only the head, or the last ``k``
units of the backbone plus the head) and whether BatchNorm layers update their
running statistics (``--bn train``) or keep the pretrained ones
(``--bn frozen``; their affine parameters are still trained if unfrozen).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from lqf.config import option
from lqf.errors import LqfError
from lqf.methods.base import FitContext, Method, register_method
from lqf.methods.core import check_core_fraction, take_core
from lqf.training import train_epochs

_UNFREEZE = re.compile(r"^(all|head|last-(\d+))$")
#: no optimizer here makes sense above this peak learning rate (AdamW steps are about lr in size)
MAX_LR = 10.0


@dataclass
class FinetuneOptions:
    """Options of ``--method finetune``."""

    optimizer: str = option("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float | None = option(
        None,
        "peak learning rate; default: 3e-4 with at most 10 training images per class, else 1e-3 "
        "(the recipes chosen on validation in benchmarks/results/baseline*.md)",
    )
    weight_decay: float = option(0.01, "decoupled (AdamW) or L2 (SGD) weight decay")
    momentum: float = option(0.9, "SGD momentum", advanced=True)
    schedule: str = option(
        "cosine", "learning-rate schedule per step", choices=("cosine", "constant"), advanced=True
    )
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs", advanced=True)
    head_lr_scale: float | None = option(
        None,
        "learning rate of the new head relative to --lr; "
        "default: 10 with at most 10 images per class, else 1",
    )
    unfreeze: str = option("all", "trained parameters: all, head, or last-K (the last K units + head)")
    bn: str = option(
        "auto",
        "BatchNorm statistics: train (update) or frozen (pretrained); auto: frozen with at most 10 "
        "images per class, else train",
        choices=("auto", "train", "frozen"),
    )
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", advanced=True)
    core_fraction: float | None = option(
        None,
        "fine-tune on this seeded, stratified fraction of the training images only (the core, "
        "listed in core.json), for lqf --around; default: all of them",
    )

    def __post_init__(self) -> None:
        if not _UNFREEZE.match(self.unfreeze):
            raise LqfError(f"--unfreeze must be all, head or last-K (e.g. last-3), got {self.unfreeze!r}")
        if self.lr is not None and (self.lr <= 0 or not math.isfinite(self.lr) or self.lr > MAX_LR):
            raise LqfError(f"--lr must be in (0, {MAX_LR:g}], got {self.lr:g}")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise LqfError(f"--weight-decay must be >= 0, got {self.weight_decay:g}")
        if not 0 <= self.momentum < 1:
            raise LqfError(f"--momentum must be in [0, 1), got {self.momentum:g}")
        if self.head_lr_scale is not None and self.head_lr_scale <= 0:
            raise LqfError(f"--head-lr-scale must be > 0, got {self.head_lr_scale:g}")
        if not 0 <= self.label_smoothing < 1:
            raise LqfError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0:
            raise LqfError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        check_core_fraction(self.core_fraction)


#: at most this many training images per class: the few-shot recipe is the default
FEW_SHOT = 10
#: the recipes benchmarks/baseline.py chose on validation: (lr, bn, head_lr_scale)
FEW_SHOT_RECIPE = (3e-4, "frozen", 10.0)
STANDARD_RECIPE = (1e-3, "train", 1.0)


def resolve_recipe(options: FinetuneOptions, per_class: float) -> tuple[FinetuneOptions, dict]:
    """Fill the options left to their defaults (``--lr``, ``--bn auto``, ``--head-lr-scale``) with
    the measured recipe for ``per_class`` training images per class; returns them and a record."""
    few = per_class <= FEW_SHOT
    lr, bn, scale = FEW_SHOT_RECIPE if few else STANDARD_RECIPE
    chosen = copy.copy(options)  # validated already: no second __post_init__
    chosen.lr = options.lr if options.lr is not None else lr
    chosen.bn = options.bn if options.bn != "auto" else bn
    chosen.head_lr_scale = options.head_lr_scale if options.head_lr_scale is not None else scale
    record = {
        "recipe": "few-shot" if few else "standard",
        "images_per_class": per_class,
        "lr": chosen.lr,
        "bn": chosen.bn,
        "head_lr_scale": chosen.head_lr_scale,
    }
    return chosen, record


def select_trainable(model: nn.Module, unfreeze: str) -> list[str]:
    """Set ``requires_grad`` per ``unfreeze``; returns the trained unit names.

    ``all`` trains every parameter, ``head`` only the head, ``last-K`` the last
    ``K`` backbone units (see :meth:`TransferModel.units`) and the head.
    """
    units = model.units()
    match = _UNFREEZE.match(unfreeze)
    if match is None:
        raise LqfError(f"--unfreeze must be all, head or last-K, got {unfreeze!r}")
    if unfreeze == "all":
        chosen = units
    else:
        k = 0 if unfreeze == "head" else int(match.group(2))
        backbone = units[:-1]
        if k > len(backbone):
            raise LqfError(
                f"--unfreeze {unfreeze}: the model has only {len(backbone)} units; "
                f"use last-{len(backbone)} or all"
            )
        chosen = backbone[len(backbone) - k :] + units[-1:]
    for p in model.parameters():
        p.requires_grad_(False)
    for _, module in chosen:
        for p in module.parameters():
            p.requires_grad_(True)
    return [name for name, _ in chosen]


def _bn_frozen_train(model: nn.Module) -> None:
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _schedule(opt: torch.optim.Optimizer, options: FinetuneOptions, steps: int, epochs: int, offset: int = 0):
    """Warm-up, then cosine (or constant) over ``steps * epochs`` steps; ``offset``: start that
    many steps into it (a phase of a longer schedule)."""
    total = steps * epochs
    warmup = int(round(options.warmup_epochs * steps))

    def factor(step: int) -> float:
        step += offset
        if step < warmup:
            return (step + 1) / warmup
        if options.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@register_method
class Finetune(Method):
    """Fine-tune backbone and head with cross-entropy."""

    name = "finetune"
    Options = FinetuneOptions
    summary = "standard fine-tuning with cross-entropy (AdamW/SGD, cosine schedule)"

    def fit(self, model: nn.Module, data, ctx: FitContext) -> None:
        o: FinetuneOptions = self.options
        model.to(ctx.device)
        if o.core_fraction is not None:
            data, core = take_core(data, o.core_fraction, ctx.config, ctx.run)
            ctx.extra["core_fraction"] = o.core_fraction
            ctx.extra["n_train"] = len(core["positions"])  # the images it was trained on
        classes = max(1, len(set(data.train.labels.tolist())))
        given = (o.lr, o.bn, o.head_lr_scale)
        o, ctx.extra["recipe"] = resolve_recipe(o, len(data.train) / classes)
        if given != (o.lr, o.bn, o.head_lr_scale):
            r = ctx.extra["recipe"]
            ctx.extra.setdefault("notes", []).append(
                f"{r['recipe']} recipe for {r['images_per_class']:g} training images per class: "
                f"--lr {o.lr:g} --bn {o.bn} --head-lr-scale {o.head_lr_scale:g}"
                " (give any of them to override)"
            )
        trained = select_trainable(model, o.unfreeze)
        head = [p for p in model.head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": body, "lr": o.lr}, {"params": head, "lr": o.lr * o.head_lr_scale}]
        groups = [g for g in groups if g["params"]]
        if o.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        steps = data.train.num_batches(ctx.config.batch_size)
        scheduler = _schedule(opt, o, steps, ctx.config.epochs)
        ctx.extra["trained_units"] = len(trained)
        ctx.extra["trained_parameters"] = sum(p.numel() for g in groups for p in g["params"])
        train_epochs(
            model,
            data,
            ctx,
            optimizer=opt,
            scheduler=scheduler,
            loss_fn=lambda logits, y: nn.functional.cross_entropy(
                logits, y, label_smoothing=o.label_smoothing
            ),
            set_train_mode=_bn_frozen_train if o.bn == "frozen" else None,
            desc="finetune",
        )
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
