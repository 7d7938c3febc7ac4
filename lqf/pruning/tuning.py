"""A fine-tuning phase of a prune run: the masked model trained with the masks held, and its
learning-rate schedule."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lqf.pruning.options import PruneOptions
from lqf.pruning.state import plan


def tune(
    model,
    masks,
    data,
    config,
    options,
    epochs,
    index,
    run,
    quiet,
    history,
    say,
    schedule_index=None,
    *,
    teacher,
):
    """Fine-tune the masked model for ``epochs`` (cross-entropy, or distilled from ``teacher``, the
    unpruned model, with ``--distill``); returns the last epoch's validation accuracy."""
    from lqf.training import train_epochs
    from lqf.training.context import FitContext
    from lqf.training.distill import distilling

    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=options.tune_lr, weight_decay=options.tune_weight_decay)
    phase = dataclasses.replace(config, epochs=epochs, seed=config.seed * 1009 + index + 1)
    steps = data.train.num_batches(config.batch_size)
    scheduler = phase_schedule(
        opt, steps, epochs, index if schedule_index is None else schedule_index, options
    )
    ctx = FitContext(config=phase, run=None, quiet=quiet)
    torch.manual_seed(phase.seed)  # dropout: the same in a resumed run
    handle = masks.attach(opt)
    try:
        loss, target = (
            (nn.functional.cross_entropy, None)
            if teacher is None
            else distilling(teacher, options.distill, options.distill_temperature)
        )
        desc = f"tune (step {index + 1})"
        train_epochs(
            model, data, ctx, optimizer=opt, scheduler=scheduler, loss_fn=loss, target_fn=target, desc=desc
        )
    finally:
        handle.remove()
    for record in ctx.history:
        record = {"step": index, **record}
        if run is not None:
            run.append_log(record)
    last = ctx.history[-1]
    say(f"fine-tuned {epochs} epoch(s) with the masks: val accuracy {100 * last['val_accuracy']:.2f}%")
    return float(last["val_accuracy"])


def phase_schedule(opt, steps: int, epochs: int, index: int, options: PruneOptions):
    """The learning rate of the fine-tuning phase at step ``index`` of the plan: a cosine over
    its own ``epochs`` (``--tune-schedule phase``), or the part of one cosine over all fine-tuning
    epochs that this phase covers (``continuous``)."""
    from lqf.methods.finetune import FinetuneOptions, _schedule

    schedule = FinetuneOptions(lr=options.tune_lr)
    if options.tune_schedule == "phase":
        return _schedule(opt, schedule, steps, epochs)
    before = sum(arg for kind, arg in plan(options)[:index] if kind == "tune")
    return _schedule(opt, schedule, steps, options.tune_epochs, offset=before * steps)
