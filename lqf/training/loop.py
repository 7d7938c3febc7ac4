"""The epoch loop shared by iterative methods: checkpoints, resume, NaN guard.

After every epoch the loop evaluates on the validation split, appends a record
to ``log.jsonl`` and writes ``checkpoint.pt`` atomically (model, optimizer,
scheduler, the global RNG state and the history). The data order of epoch
``e`` comes from a generator seeded by ``(seed, e)``, so a run resumed from the
checkpoint of epoch ``e - 1`` continues exactly as the uninterrupted run would
have (bit-identical on the CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lqf import distributed
from lqf.errors import NonFiniteLossError
from lqf.training.evaluate import evaluate
from lqf.training.progress import progress

if TYPE_CHECKING:
    from lqf.data import DataSplits
    from lqf.training.context import FitContext

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _WithStats(nn.Module):
    """``model`` and a 2-vector parameter ``stats`` (never optimized) whose gradient carries a
    step's loss and hits through DDP's gradient all-reduce."""

    def __init__(self, model: nn.Module, device) -> None:
        super().__init__()
        self.model = model
        self.stats = nn.Parameter(torch.zeros(2, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _resume(ctx: FitContext, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Load the checkpoint if resuming; returns the first epoch still to run."""
    if ctx.run is None:
        return 1
    state = ctx.run.load_checkpoint() if ctx.resume else None
    if state is None:
        ctx.run.truncate_log(0)  # a fresh start: drop records of an unfinished earlier attempt
        return 1
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    ctx.history[:] = state["history"]
    ctx.resumed_seconds = sum(r.get("seconds") or 0.0 for r in ctx.history)
    ctx.run.truncate_log(state["epoch"])
    return int(state["epoch"]) + 1


def _share_resumed(ctx: FitContext, model: nn.Module, optimizer, scheduler, first: int) -> None:
    """Give every process the state process 0 resumed from (only it reads the run directory)."""
    state = None
    if distributed.is_main() and first > 1:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": torch.get_rng_state(),
            "history": list(ctx.history),
            "resumed_seconds": ctx.resumed_seconds,
        }
    state = distributed.broadcast(state)
    if state is None or distributed.is_main():
        return
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    ctx.history[:] = state["history"]
    ctx.resumed_seconds = state["resumed_seconds"]


def train_epochs(
    model: nn.Module,
    data: DataSplits,
    ctx: FitContext,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    set_train_mode: Callable[[nn.Module], None] | None = None,
    desc: str = "train",
    divergence: float | None = None,
    lr_flag: str = "--lr",
    target_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
) -> None:
    """Train ``model`` for ``ctx.config.epochs`` epochs, resumable.

    Args:
        model: trained in place; its outputs ``(B, C)`` feed ``loss_fn``.
        data: ``train`` is iterated in shuffled mini-batches, ``val`` evaluated
            after each epoch.
        ctx: settings, run directory and logging.
        optimizer: steps once per mini-batch.
        scheduler: steps once per mini-batch (``None``: constant rate).
        loss_fn: ``loss_fn(logits, labels)``, a scalar.
        set_train_mode: puts the model in training mode (default
            ``model.train()``); e.g. keeps BatchNorm frozen.
        desc: progress-bar label.
        divergence: stop when a batch loss exceeds this many times the first
            batch loss of this call (``None``: only NaN/infinity stop it); for
            convex objectives, where such growth can only mean divergence.
        lr_flag: the learning-rate flag the error messages name.
        target_fn: turns a batch ``(x, y)`` into ``loss_fn``'s second argument
            (default: ``y``), e.g. labels and a teacher's logits to distil.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite, or grew past
            ``divergence``; the checkpoint of the last finished epoch is kept.
    """
    cfg = ctx.config
    device = ctx.device
    first = _resume(ctx, model, optimizer, scheduler)
    rank, size = distributed.world()
    net = model
    if size > 1:  # process 0 resumed: every process continues from its state
        if ctx.resume:
            _share_resumed(ctx, model, optimizer, scheduler, first)
            first = distributed.broadcast(first)
        from torch.nn.parallel import DistributedDataParallel

        # gradients averaged over the processes; the step's loss and hits travel in the same buckets
        # (the gradient of _WithStats.stats), and BatchNorm buffers stay each process's own (process
        # 0's are the ones saved, as they would be with DDP's broadcast of them): no other collective
        counted = _WithStats(model, device)
        net = DistributedDataParallel(counted, broadcast_buffers=False)
    steps = data.train.num_batches(cfg.batch_size)
    reference: float | None = None
    began = time.perf_counter()
    for epoch in range(first, cfg.epochs + 1):
        start = time.perf_counter()
        # model.train() (not nn.Module.train) so that a model overriding it, e.g. to keep a frozen
        # prefix with BatchNorm in eval mode, is respected
        (set_train_mode or (lambda m: m.train()))(model)
        total_loss, correct, seen = 0.0, 0, 0
        batches = data.train.batches(cfg.batch_size, shuffle=True, generator=ctx.generator(epoch))
        bar = progress(batches, total=steps, desc=f"{desc} {epoch}/{cfg.epochs}", quiet=ctx.quiet)
        calls = distributed.TRAFFIC["all_reduce_calls"] + distributed.TRAFFIC["gather_calls"]
        for step, (x, y) in enumerate(bar, start=1):
            batch = len(y)
            if size > 1:  # this process's share of the global batch, weighted by it
                x, y = x[rank::size], y[rank::size]
            x, y = x.to(device), y.to(device)
            logits = net(x)
            if size > 1 and not len(y):  # a last batch with fewer images than processes: none here
                loss = logits.sum() * 0.0  # zero gradients, so DDP's all-reduce still meets every process
            else:
                loss = loss_fn(logits, y if target_fn is None else target_fn(x, y))
            optimizer.zero_grad(set_to_none=True)
            if size > 1:
                loss = loss * (len(y) * size / batch)  # DDP averages: sum of shares = the batch mean
                # DDP averages stats' gradient, [loss, hits] of this share: [batch mean, hits / size]
                local = torch.tensor([loss.item(), (logits.argmax(1) == y).sum().item()], device=device)
                counted.stats.grad = None
                (loss + (counted.stats * local).sum()).backward()
                value, hits = counted.stats.grad.tolist()
                hits = round(hits * size)
            else:
                value, hits = loss.item(), None
            # the guard comes before the step: a non-finite or diverging loss is never applied
            if not math.isfinite(value):
                raise _non_finite(ctx, epoch, step, value, lr_flag)
            reference = value if reference is None else reference
            if divergence is not None and value > divergence * max(reference, 1e-12):
                raise _non_finite(ctx, epoch, step, value, lr_flag, start=reference)
            if size == 1:
                loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if epoch == first and step == ESTIMATE_AFTER and not ctx.quiet:
                _estimate(began, step, steps, cfg.epochs - first + 1, len(data.train), desc)
            total_loss += value * batch
            correct += (logits.argmax(1) == y).sum().item() if hits is None else int(hits)
            seen += batch
        if size > 1:  # collectives of lqf's own in the steps (DDP's buckets are not counted: 0 expected)
            extra = distributed.TRAFFIC["all_reduce_calls"] + distributed.TRAFFIC["gather_calls"] - calls
            ctx.extra["step_collectives"] = ctx.extra.get("step_collectives", 0) + extra
        val = evaluate(model, data.val, batch_size=max(cfg.batch_size, 256), device=device)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / seen,
            "train_accuracy": correct / seen,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        ctx.log({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
        if ctx.run is not None:
            ctx.run.save_checkpoint(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": torch.get_rng_state(),
                    "history": list(ctx.history),
                }
            )
        if ctx.on_epoch_end is not None:
            ctx.on_epoch_end(epoch)


#: steps after which a long run says how long it will take
ESTIMATE_AFTER = 5
#: runs predicted to take at least this many seconds say so
ESTIMATE_AT_LEAST = 120.0


def _estimate(began: float, step: int, steps: int, epochs: int, images: int, desc: str) -> None:
    """One line with the expected duration, once the first steps have shown the pace."""
    from lqf.training.progress import say

    seconds = (time.perf_counter() - began) / step * steps * epochs
    if seconds >= ESTIMATE_AT_LEAST:
        when = f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
        say(
            f"{desc}: {images} training images, {epochs} epoch(s) to go: about {when} at this pace "
            "(validation passes not counted); fewer --shots or --epochs for a quicker run"
        )


def _non_finite(
    ctx: FitContext, epoch: int, step: int, value: float, lr_flag: str = "--lr", start: float | None = None
) -> NonFiniteLossError:
    kept = ""
    if ctx.run is not None and epoch > 1:
        kept = f"; the checkpoint of epoch {epoch - 1} is kept in {ctx.run.path}"
    what = f"became {value}" if start is None else f"grew from {start:.3g} to {value:.3g} (diverging)"
    return NonFiniteLossError(
        f"the training loss {what} at epoch {epoch}, step {step}{kept}; "
        f"lower the learning rate ({lr_flag}) or check the data for extreme values"
    )
