"""Batched inference and accuracy on an :class:`~lqf.data.ImageSet`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from lqf.training.progress import progress

if TYPE_CHECKING:
    from lqf.data import ImageSet


@torch.no_grad()
def apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: ImageSet,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "evaluate",
    quiet: bool = True,
    _local: bool = False,
) -> torch.Tensor:
    """Concatenate ``fn(x)`` over the batches of ``images`` (on the CPU).

    Under ``torchrun`` each process computes its share of the images and every process gets all
    the rows, in order (:mod:`lqf.distributed`)."""
    from lqf import distributed

    rank, size = distributed.world()
    if size > 1 and len(images) >= size and not _local:
        mine = apply(
            fn,
            images.subset(distributed.shard(len(images))),
            batch_size=batch_size,
            device=device,
            desc=desc,
            quiet=quiet or rank > 0,
            _local=True,
        )
        return distributed.gather_rows(mine, len(images))
    outs = []
    batches = images.batches(batch_size)
    total = images.num_batches(batch_size)
    for x, _ in progress(batches, total=total, desc=desc, quiet=quiet):
        outs.append(fn(x.to(device)).float().cpu())
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def predict_logits(
    model: nn.Module,
    images: ImageSet,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    quiet: bool = True,
) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` in eval mode (its mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        return apply(model, images, batch_size=batch_size, device=device, quiet=quiet)
    finally:
        model.train(was_training)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label (``nan`` if empty)."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def evaluate(
    model: nn.Module,
    images: ImageSet,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    quiet: bool = True,
) -> dict[str, float]:
    """``{"accuracy", "loss"}`` (cross-entropy) of ``model`` on ``images``."""
    if len(images) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    logits = predict_logits(model, images, batch_size=batch_size, device=device, quiet=quiet)
    loss = nn.functional.cross_entropy(logits, images.labels).item()
    return {"accuracy": accuracy(logits, images.labels), "loss": loss}
