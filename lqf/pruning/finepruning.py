"""Fine-Pruning: fine-tuning and per-layer magnitude pruning, optimised jointly.

Tung, Muralidharan and Mori, "Fine-Pruning: Joint Fine-Tuning and Compression
of a Convolutional Network with Bayesian Optimization", BMVC 2017. Instead of
pruning once with hand-set per-layer rates and fine-tuning afterwards, the
pruning fractions ``theta`` (one per layer group) are re-chosen while the
network is fine-tuned::

    start: a fine-tuned model (its validation accuracy is the reference a_ref)
    for round r = 1 .. R:
        search: T trials, each = masks for theta from the current weights'
                magnitudes -> accuracy on the validation subset (no training);
                Bayesian optimisation proposes theta (lqf.pruning.search) in
                the search space (lqf.pruning.spaces)
        prune:  apply the masks of the round's best theta
        tune:   fine-tune --round-epochs with the masks held (lqf.pruning.masks)
    final:  fine-tune --final-epochs

Each round's configuration must keep the accuracy drop, measured before that
round's fine-tuning, within ``--target-drop``; ``--round-drop`` allows a larger
drop in the rounds before the last, since their fine-tuning recovers part of
it (gradual pruning). The drop is measured from the unpruned model
(``--round-reference start``) or from the model the previous round's
fine-tuning left (``current``): then each round may cost up to that many
points again, fine-tuning recovers them, and compression builds up round by
round. After every fine-tuning phase the model is a candidate: with
``--keep-best`` (the default) the run ends with the most compressed candidate
whose validation drop from the unpruned model is within ``--target-drop``
(chosen on validation, never on test), so a last round that pruned too far
cannot spoil the result. If no candidate is within the target, ``--back-off``
undoes the rounds from the last: the model as it was before that round pruned
(saved after the previous round's fine-tuning) is fine-tuned for
``--final-epochs`` and becomes a candidate, until one is within the target
(each undone round costs ``--final-epochs`` more; the first round is never
undone). The final drop on test is measured and reported, not guaranteed.

The candidates are few, but the search chose each one's rates among many
trials on the same validation images, so its validation drop tends to
understate the drop on new images. ``--select-val N`` holds the last ``N``
validation images of every class out of the search and its fine-tuning logs:
only they judge the candidates (keep-best, back-off), and their drop is
reported as the held-out drop.

What theta is depends on ``--space``. ``threshold`` (the default): one global
magnitude threshold, set by how much more compression it would add, times one
factor per group; pruned weights (0) stay pruned, so compression only grows
from round to round, and the plain global threshold is one point of the space.
``fraction``: one pruning fraction per group, each layer pruned by that fraction
of its own weights; a later round with a smaller fraction can give a pruned
weight back (it restarts from 0), so theta adapts in both directions.

The baselines share the budget of fine-tuning epochs
(``R * round_epochs + final_epochs``): ``uniform`` prunes every layer by one
fraction and ``global`` by one magnitude threshold, once, then fine-tune;
``random`` is the loop above with random search.

Everything is resumable: the search history is written after every trial and
a checkpoint (weights, masks) after every step, so an interrupted run repeats
at most the step it was in, and no finished trial.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lqf.config import FitConfig
from lqf.errors import LqfError
from lqf.io import atomic_write, read_json, write_json
from lqf.pruning.export import load_packed, save_packed
from lqf.pruning.layers import PrunableLayer, find_prunable, groups_of
from lqf.pruning.masks import MaskSet, global_masks, layer_masks, theta_for_compression
from lqf.pruning.objective import Objective
from lqf.pruning.options import PruneOptions
from lqf.pruning.search import search_round
from lqf.pruning.spaces import FractionSpace, make_space

HISTORY = "history.json"
PACKED = "model.packed.safetensors"
PARETO = "pareto.png"
BEST = "best.pt"
#: the model and masks after round ``r``'s fine-tuning, kept while the run may back off to them
SNAPSHOT = "round{}.pt"
RATES = "rates.png"


@dataclass
class PruneResult:
    """What :func:`prune` returns: the pruned model, its masks and metrics."""

    model: nn.Module
    masks: MaskSet
    metrics: dict[str, Any]
    history: dict[str, Any]


def plan(options: PruneOptions) -> list[tuple[str, int]]:
    """The steps of a run: ``("search", r)``, ``("tune", epochs)``, ``("prune", 0)``."""
    if options.searched:
        steps: list[tuple[str, int]] = []
        for r in range(1, options.rounds + 1):
            steps += [("search", r), ("tune", options.round_epochs)]
        return steps + [("tune", options.final_epochs)]
    return [("prune", 0), ("tune", options.tune_epochs)]


def validation_subset(data, size: int | None):
    """The first ``size`` images of a stratified subsample of ``data.val`` (all if ``None``)."""
    if size is None or size >= len(data.val):
        return data.val
    from lqf.data.splits import stratified_subsample

    idx = stratified_subsample(data.val.labels.numpy(), torch.arange(len(data.val)).numpy(), size)
    return data.val.subset(idx)


def held_out(val, per_class: int):
    """Split ``val`` into ``(search, select)``: the last ``per_class`` images of every class
    (in the split's order) form ``select``, the rest ``search``; ``(val, None)`` if ``per_class`` is 0.

    Raises:
        LqfError: when a class would have no image left for the search.
    """
    if per_class <= 0:
        return val, None
    labels = val.labels
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(len(val.classes)):
        where = torch.nonzero(labels == c).flatten()
        if len(where) <= per_class:
            raise LqfError(
                f"--select-val {per_class} leaves no validation image of class {val.classes[c]!r} for "
                f"the search (it has {len(where)}): use a smaller --select-val or a larger --extra-val"
            )
        chosen[where[-per_class:]] = True
    return val.subset(~chosen), val.subset(chosen)


class MaskedAccuracy:
    """``theta -> accuracy`` of the current weights with ``theta``'s masks (weights restored after).

    Pruning shifts the statistics of every activation, so the BatchNorm running
    statistics of the unpruned weights misjudge a pruned network that
    fine-tuning (which re-estimates them) would largely repair. With
    ``bn_batches > 0`` each trial first re-estimates them (cumulative average)
    on that many fixed training batches, evaluates, and restores them.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[PrunableLayer],
        images,
        batch_size: int,
        device: str,
        bn_images: list[torch.Tensor] = (),
    ):
        self.model, self.layers, self.images = model, layers, images
        self.batch_size, self.device = batch_size, device
        self.bn_images = list(bn_images)
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.calls = 0
        #: ``theta -> masks`` (the search round's space; per-group fractions until one is set)
        self.masks_of: Callable[[Any], dict[str, torch.Tensor]] = lambda theta: layer_masks(layers, theta)

    @torch.no_grad()
    def __call__(self, theta) -> float:
        from lqf.training import evaluate

        saved = [layer.module.weight.detach().clone() for layer in self.layers]
        saved_bn = [({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in self.norms]
        masks = self.masks_of(theta)
        try:
            for layer in self.layers:
                layer.module.weight.mul_(masks[layer.name])
            if self.bn_images and self.norms:
                self.recalibrate()
            self.calls += 1
            return evaluate(self.model, self.images, batch_size=self.batch_size, device=self.device)[
                "accuracy"
            ]
        finally:
            for layer, w in zip(self.layers, saved, strict=True):
                layer.module.weight.copy_(w)
            for m, (state, momentum) in zip(self.norms, saved_bn, strict=True):
                m.load_state_dict(state)
                m.momentum = momentum

    def recalibrate(self) -> None:
        """Running statistics = the average over ``bn_images`` batches (train-mode forward passes)."""
        for m in self.norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = self.model.training
        self.model.train()
        for x in self.bn_images:
            self.model(x.to(self.device))
        self.model.train(was_training)


def bn_batches(data, batch_size: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` fixed training batches (seeded) for BatchNorm re-estimation."""
    if count <= 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x, _ in data.train.batches(batch_size, shuffle=True, generator=gen):
        out.append(x)
        if len(out) == count:
            break
    return out


def prune(
    model: nn.Module,
    data,
    config: FitConfig,
    options: PruneOptions,
    *,
    run=None,
    resume: bool = False,
    quiet: bool = False,
    say: Callable[[str], None] = lambda text: None,
) -> PruneResult:
    """Prune a fine-tuned ``model`` (in place) with ``options.strategy``.

    Args:
        model: a fine-tuned :class:`~lqf.models.TransferModel`.
        data: its :class:`~lqf.data.DataSplits` (the same split it was fine-tuned on).
        config: the run settings (batch size, seed, device).
        options: what and how to prune.
        run: a :class:`~lqf.runs.RunDirectory` for the history, checkpoints and
            outputs (``None``: nothing is written, nothing resumable).
        resume: continue from ``run``'s history and checkpoint.
        quiet: no progress bars.
        say: one-line progress messages (the CLI prints them).

    Returns:
        The pruned model (in eval mode), its masks, ``metrics`` (reference and
        final accuracies, compression, file sizes, search timing) and the
        search history.
    """
    from lqf.runs.device import check_device
    from lqf.training import evaluate

    started = time.perf_counter()
    device = config.device
    check_device(device)
    model.to(device)
    layers = find_prunable(
        model, include_head=options.prune_head, exclude=options.excluded, grouping=options.groups
    )
    groups = groups_of(layers)
    masks = MaskSet(layers)
    if len(data.val) == 0:
        raise LqfError("the validation split is empty; pruning chooses rates on it: use --val-per-class >= 1")
    # the search, its fine-tuning logs and the trials see `tuning.val`; the candidates are judged
    # on `select` when part of the validation split is held out for that (--select-val)
    search_val, select = held_out(data.val, options.select_val)
    tuning = dataclasses.replace(data, val=search_val) if select is not None else data
    subset = validation_subset(tuning, options.val_subset)
    eval_batch = max(256, config.batch_size)

    def judge(model: nn.Module, val: float | None = None) -> float:
        """The accuracy the candidates are judged by (``val``: the search split's, when it is that)."""
        if select is None and val is not None:
            return val
        return evaluate(model, data.val if select is None else select, batch_size=eval_batch, device=device)[
            "accuracy"
        ]

    history = _load_history(run) if resume else None
    state = run.load_checkpoint() if (resume and run is not None) else None
    if history is None:
        model.eval()
        history = {
            "groups": groups,
            "layers": [{"name": x.name, "group": x.group, "params": x.numel} for x in layers],
            "reference": {
                "val_subset_accuracy": evaluate(model, subset, batch_size=eval_batch, device=device)[
                    "accuracy"
                ],
                "val_accuracy": evaluate(model, data.val, batch_size=eval_batch, device=device)["accuracy"],
                "test_accuracy": evaluate(
                    model, data.test, batch_size=eval_batch, device=device, quiet=quiet
                )["accuracy"],
                "n_val_subset": len(subset),
            },
            "trials": [],
            "rounds": [],
            "steps": [],
        }
        if select is not None:
            history["reference"]["select_accuracy"] = judge(model)
            history["reference"]["n_select"] = len(select)
        _save_history(run, history)
        state = None
    ref = history["reference"]
    objective = Objective(
        reference=ref["val_subset_accuracy"], target_drop=options.epsilon, gamma=options.gamma
    )
    say(
        f"reference (unpruned): val {100 * ref['val_accuracy']:.2f}%, "
        f"val subset {100 * ref['val_subset_accuracy']:.2f}% ({ref['n_val_subset']} images), "
        f"test {100 * ref['test_accuracy']:.2f}%"
        + (
            f", held out for the final choice {100 * ref['select_accuracy']:.2f}% ({ref['n_select']} images)"
            if select is not None
            else ""
        )
        + f"; objective: {objective.describe()}"
    )
    # the teacher of --distill: the unpruned model, copied before a resumed run loads its pruned state
    teacher = copy.deepcopy(model).eval() if options.distill > 0 else None
    first = 0
    if state is not None:
        model.load_state_dict(state["model"])
        masks.load_state_dict(state["masks"])
        first = int(state["step"]) + 1
    steps = plan(options)
    kept: dict[str, Any] = {}  # the state of history["best"], once this process has it
    keeping = options.searched and options.keep_best and objective.constrained
    last = len(steps) - 1
    snapshots: dict[int, dict[str, Any]] = {}  # round -> state (in memory when there is no run)
    undo = options.back_off_rounds if keeping and options.final_epochs > 0 else 0
    recal = bn_batches(data, config.batch_size, options.bn_batches, config.seed + 7919)
    measure = MaskedAccuracy(model, layers, subset, eval_batch, device, recal)
    for index, (kind, arg) in enumerate(steps):
        if index < first:
            continue
        step_start = time.perf_counter()
        if kind == "search":
            _search(
                arg,
                model,
                layers,
                masks,
                measure,
                objective,
                options,
                config,
                history,
                run,
                quiet,
                say,
            )
        elif kind == "prune":
            _prune_once(layers, masks, options, history, say)
        elif arg > 0:
            val = _tune(
                model, masks, tuning, config, options, arg, index, run, quiet, history, say, teacher=teacher
            )
            if keeping:
                _keep_if_best(model, masks, judge(model, val), index, options, history, run, kept)
        if kind == "tune" and options.rounds - undo <= (index + 1) // 2 < options.rounds:
            _save_snapshot(run, snapshots, (index + 1) // 2, model, masks)
        history["steps"] = [s for s in history["steps"] if s["step"] != index]
        history["steps"].append({"step": index, "kind": kind, "seconds": time.perf_counter() - step_start})
        _save_history(run, history)
        if run is not None:
            run.save_checkpoint({"step": index, "model": model.state_dict(), "masks": masks.state_dict()})
    if keeping:
        if steps[last][1] == 0:  # no final fine-tuning: the model as the last search left it
            model.eval()
            _keep_if_best(model, masks, judge(model), last, options, history, run, kept)
        for k in range(undo):
            why = _undo_reason(options.rounds - k, options, history)
            if why is None:
                break
            last = len(steps) + k
            if last >= first:
                _back_off(
                    why,
                    options.rounds - k,
                    last,
                    model,
                    masks,
                    tuning,
                    judge,
                    config,
                    options,
                    history,
                    run,
                    snapshots,
                    kept,
                    quiet,
                    say,
                    teacher=teacher,
                )
        _restore_best(model, masks, history, run, last, say, kept, options.epsilon)
    model.eval()
    metrics = _finish(model, masks, data, select, config, options, history, run, eval_batch, quiet)
    for r in range(1, options.rounds):  # only a resumed back-off needs them
        if run is not None and run.has(SNAPSHOT.format(r)):
            os.remove(run.file(SNAPSHOT.format(r)))
    metrics["wall_seconds_this_process"] = time.perf_counter() - started
    if run is not None:
        run.write_metrics(metrics)
        from lqf.pruning.plots import plot_pareto, plot_rates

        plot_pareto(
            history, metrics, run.file(PARETO), title=f"{options.strategy}: {config.model} on {config.data}"
        )
        plot_rates(masks.counts(), run.file(RATES), title=f"per-layer pruning ({options.strategy})")
    return PruneResult(model=model, masks=masks, metrics=metrics, history=history)


def _search(round_index, model, layers, masks, measure, objective, options, config, history, run, quiet, say):
    from lqf.training.progress import progress

    space = make_space(
        options.space,
        layers,
        theta_max=options.theta_max,
        max_step=options.max_step,
        group_factor=options.group_factor,
    )
    measure.masks_of = space.masks
    if objective.constrained and options.round_drop is not None and round_index < options.rounds:
        objective = dataclasses.replace(objective, target_drop=options.round_drop)
    if options.round_reference == "current":
        # the current (masked, fine-tuned) weights, BatchNorm re-estimated as in every trial
        model.eval()
        objective = dataclasses.replace(objective, reference=measure(space.identity()))
    done = [t for t in history["trials"] if t["round"] == round_index]
    previous = [t for t in history["trials"] if t["round"] == round_index - 1]
    warm: list[dict[str, float]] = []
    if previous and options.warm_start:
        chosen = history["rounds"][-1]["theta"]
        ranked = sorted(previous, key=lambda t: _rank(objective, t), reverse=True)
        for point in [space.carry(p) for p in [chosen] + [t["theta"] for t in ranked]]:
            if point not in warm:
                warm.append(point)
        warm = warm[: options.warm_start]
    warm += [p for p in space.starts(options.global_starts) if p not in warm]
    model.eval()
    remaining = range(options.trials - len(done))
    bar = iter(progress(remaining, desc=f"search {round_index}/{options.rounds}", quiet=quiet))

    def record(trial: dict[str, Any]) -> None:
        history["trials"].append(trial)
        _save_history(run, history)
        next(bar, None)

    records = search_round(
        space=space,
        evaluate=measure,
        objective=objective,
        trials=options.trials,
        sampler="gp" if options.strategy == "bo" else "random",
        seed=config.seed * 1000 + round_index,
        startup_trials=options.startup_trials,
        warm=warm,
        done=done,
        on_trial=record,
        round_index=round_index,
    )
    best = objective.best(records)
    masks.update(space.masks(best["theta"]))
    counts = masks.counts()
    history["rounds"] = [r for r in history["rounds"] if r["round"] != round_index]
    history["rounds"].append(
        {k: best[k] for k in ("round", "number", "theta", "accuracy", "drop", "removed", "compression")}
        | {"reference": objective.reference, "space": space.name, "fractions": _group_fractions(counts)}
    )
    say(
        f"round {round_index}: chose trial {best['number']} of {len(records)}: compression "
        f"{best['compression']:.2f}x, val subset accuracy {100 * best['accuracy']:.2f}% "
        f"(drop {best['drop']:+.2f} points, before fine-tuning)"
    )


def _group_fractions(counts) -> dict[str, float]:
    """The fraction of each group's weights that is pruned."""
    totals: dict[str, list[int]] = {}
    for c in counts.layers:
        t = totals.setdefault(c.group, [0, 0])
        t[0] += c.total - c.kept
        t[1] += c.total
    return {g: k / n for g, (k, n) in totals.items()}


def global_starts(layers: list[PrunableLayer], count: int, theta_max: float) -> list[dict[str, float]]:
    """Per-group fractions that one global magnitude threshold gives, at ``count`` compression
    rates spaced geometrically from 1.5x to 8x (on the current weights): the first trials of a
    round in the fraction space (:meth:`~lqf.pruning.spaces.FractionSpace.starts`).

    Global magnitude pruning is a strong one-parameter heuristic; offering its rates as the
    first trials lets the search start from it and refine it group by group."""
    return FractionSpace(layers, theta_max=theta_max).starts(count)


def _rank(objective: Objective, trial: dict[str, Any]) -> tuple:
    if objective.constrained:
        return (trial["feasible"], trial["removed"] if trial["feasible"] else trial["accuracy"])
    return (True, trial["value"])


def _prune_once(layers, masks, options, history, say):
    fraction = theta_for_compression(options.target_compression)
    if options.strategy == "uniform":
        chosen = layer_masks(layers, {layer.group: fraction for layer in layers})
    else:
        chosen = global_masks(layers, fraction)
    masks.update(chosen)
    counts = masks.counts()
    history["rounds"] = [
        {
            "round": 0,
            "theta": {c.name: c.fraction_pruned for c in counts.layers},
            "removed": counts.removed,
            "compression": counts.rate,
        }
    ]
    say(
        f"{options.strategy} pruning to {counts.rate:.2f}x "
        f"({100 * counts.removed:.1f}% of prunable parameters)"
    )


def _state(model, masks) -> dict[str, Any]:
    """A CPU copy of the model's and the masks' state."""
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "masks": {k: v.cpu().clone() for k, v in masks.state_dict().items()},
    }


def _load_state(model, masks, state, run, name: str, what: str) -> None:
    """Load ``state`` (or, if ``None``, the file ``name`` of ``run``) into the model and masks."""
    if state is None and run is not None and run.has(name):
        state = torch.load(run.file(name), map_location="cpu", weights_only=False)
    if state is None:
        raise LqfError(f"this prune run has lost its {what}; run it again without --resume")
    model.load_state_dict(state["model"])
    masks.load_state_dict(state["masks"])


def _save_snapshot(run, snapshots: dict[int, dict[str, Any]], r: int, model, masks) -> None:
    """Keep the model and masks after round ``r``'s fine-tuning (a file in ``run``, else memory)."""
    state = _state(model, masks)
    if run is None:
        snapshots[r] = state
    else:
        atomic_write(run.file(SNAPSHOT.format(r)), lambda tmp: torch.save(state, tmp))


def _undo_reason(undone: int, options: PruneOptions, history: dict[str, Any]) -> str | None:
    """Why round ``undone`` is undone, or ``None`` to stop backing off: undo while no candidate is
    within the target, and with ``--back-off-until most-compressed`` also while the model it goes
    back to (after round ``undone - 1``) is more compressed than the kept candidate."""
    best = history.get("best")
    if best is None:
        return f"no model within {options.epsilon:g} points of validation drop"
    if options.back_off_until == "within":
        return None
    back_to = next(r for r in history["rounds"] if r["round"] == undone - 1)["compression"]
    if back_to <= best["compression"]:
        return None
    return f"the model kept within the target is less compressed ({best['compression']:.2f}x)"


def _back_off(
    why,
    undone,
    index,
    model,
    masks,
    data,
    judge,
    config,
    options,
    history,
    run,
    snapshots,
    kept,
    quiet,
    say,
    teacher=None,
):
    """Step ``index``: undo round ``undone`` (restore the state its search started from, i.e. after
    round ``undone - 1``'s fine-tuning), fine-tune it for ``--final-epochs``, offer it as a candidate
    (judged by ``judge(model, val)``); ``why`` (from ``_undo_reason``) opens the message."""
    started = time.perf_counter()
    _load_state(model, masks, snapshots.get(undone - 1), run, SNAPSHOT.format(undone - 1), "saved rounds")
    say(
        f"{why}: undoing round {undone} "
        f"(back to {masks.counts().rate:.2f}x) and fine-tuning {options.final_epochs} epoch(s)"
    )
    final = len(plan(options)) - 1  # the same learning-rate schedule as the final phase
    val = _tune(
        model,
        masks,
        data,
        config,
        options,
        options.final_epochs,
        index,
        run,
        quiet,
        history,
        say,
        schedule_index=final,
        teacher=teacher,
    )
    _keep_if_best(model, masks, judge(model, val), index, options, history, run, kept, round_index=undone - 1)
    entry = {**history["candidates"][-1], "round": undone}  # the round undone
    history["back_off"] = [b for b in history.get("back_off", []) if b["step"] != index] + [entry]
    history["steps"] = [s for s in history["steps"] if s["step"] != index]
    history["steps"].append({"step": index, "kind": "back-off", "seconds": time.perf_counter() - started})
    _save_history(run, history)
    if run is not None:
        run.save_checkpoint({"step": index, "model": model.state_dict(), "masks": masks.state_dict()})


def _tune(
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
    scheduler = _phase_schedule(
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


def _phase_schedule(opt, steps: int, epochs: int, index: int, options: PruneOptions):
    """The learning rate of the fine-tuning phase at step ``index`` of the plan: a cosine over
    its own ``epochs`` (``--tune-schedule phase``), or the part of one cosine over all fine-tuning
    epochs that this phase covers (``continuous``)."""
    from lqf.methods.finetune import FinetuneOptions, _schedule

    schedule = FinetuneOptions(lr=options.tune_lr)
    if options.tune_schedule == "phase":
        return _schedule(opt, schedule, steps, epochs)
    before = sum(arg for kind, arg in plan(options)[:index] if kind == "tune")
    return _schedule(opt, schedule, steps, options.tune_epochs, offset=before * steps)


def _keep_if_best(model, masks, val, step, options, history, run, kept, round_index=None) -> None:
    """Record the model after ``step`` (``val``: its accuracy on the judging images, the held-out
    ones of ``--select-val`` or else the validation split) as a candidate; keep it if it is the most
    compressed one whose drop there from the unpruned model is within ``--target-drop`` (at equal
    compression the more accurate one; on a tie the later, more fine-tuned one)."""
    ref = history["reference"]
    drop = 100.0 * (ref.get("select_accuracy", ref["val_accuracy"]) - val)
    rate = masks.counts().rate
    entry = {
        "step": step,
        "round": len(history["rounds"]) if round_index is None else round_index,
        "val_accuracy": val,
        "drop": drop,
        "compression": rate,
    }
    history["candidates"] = [c for c in history.get("candidates", []) if c["step"] != step] + [entry]
    best = history.get("best")
    # a later phase at the same compression replaces the kept model unless it is less accurate
    beaten = (
        best is not None
        and best["step"] != step
        and (rate < best["compression"] or (rate == best["compression"] and val < best["val_accuracy"]))
    )
    if drop > options.epsilon + 1e-9 or beaten:
        return
    kept["state"] = _state(model, masks)
    kept["step"] = step
    if run is not None:
        atomic_write(run.file(BEST), lambda tmp: torch.save(kept["state"], tmp))
    history["best"] = entry
    _save_history(run, history)


def _restore_best(model, masks, history, run, last, say, kept, epsilon: float) -> None:
    """End with the kept model (if it is not the final one already)."""
    best = history.get("best")
    if best is None:
        say(f"no candidate model was within {epsilon:g} points of validation drop: ending with the last")
        return
    if best["step"] == last:
        return
    state = kept.get("state") if kept.get("step") == best["step"] else None
    _load_state(model, masks, state, run, BEST, "kept model")
    say(
        f"kept the model after step {best['step'] + 1}: compression {best['compression']:.2f}x, "
        f"val drop {best['drop']:+.2f} points (the final one was less compressed or over the target)"
    )


def _finish(model, masks, data, select, config, options, history, run, eval_batch, quiet) -> dict[str, Any]:
    from lqf.training import evaluate

    counts = masks.counts()
    val = evaluate(model, data.val, batch_size=eval_batch, device=config.device)["accuracy"]
    test = evaluate(model, data.test, batch_size=eval_batch, device=config.device, quiet=quiet)["accuracy"]
    ref = history["reference"]
    trials = history["trials"]
    sampler_s = sum(t["sampler_seconds"] for t in trials)
    eval_s = sum(t["eval_seconds"] for t in trials)
    metrics: dict[str, Any] = {
        "strategy": options.strategy,
        "model": config.model,
        "data": config.data,
        "shots": config.shots,
        "seed": config.seed,
        "objective": Objective(ref["val_subset_accuracy"], options.epsilon, options.gamma).describe()
        if options.searched
        else f"one-shot {options.strategy} pruning to {options.target_compression:g}x",
        "reference_val_accuracy": ref["val_accuracy"],
        "reference_test_accuracy": ref["test_accuracy"],
        "val_accuracy": val,
        "test_accuracy": test,
        "val_drop_points": 100 * (ref["val_accuracy"] - val),
        "test_drop_points": 100 * (ref["test_accuracy"] - test),
        "params_prunable": counts.total,
        "params_kept": counts.kept,
        "compression": counts.rate,
        "removed_fraction": counts.removed,
        "theta": _theta_of_result(history),
        "group_fractions": _group_fractions(counts),
        "kept_step": history["best"]["step"] if history.get("best") else None,
        "back_off": history.get("back_off", []),
        "tune_epochs_run": options.tune_epochs + len(history.get("back_off", [])) * options.final_epochs
        if options.searched
        else options.tune_epochs,
        "candidates": history.get("candidates", []),
        "trials": len(trials),
        "search_sampler_seconds": sampler_s,
        "search_eval_seconds": eval_s,
        "search_overhead_share": sampler_s / (sampler_s + eval_s) if trials else None,
        "seconds_by_step": {f"{s['step']}:{s['kind']}": s["seconds"] for s in history["steps"]},
        "seconds": sum(s["seconds"] for s in history["steps"]),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "n_select": 0,
    }
    if select is not None:  # the held-out images the candidates were judged on (part of val)
        held = evaluate(model, select, batch_size=eval_batch, device=config.device)["accuracy"]
        metrics |= {
            "n_select": len(select),
            "reference_select_accuracy": ref["select_accuracy"],
            "select_accuracy": held,
            "select_drop_points": 100 * (ref["select_accuracy"] - held),
        }
    if run is not None:
        from lqf.runs.fit import model_info

        run.save_model(model, model_info(model, config, data.classes))
        packed = save_packed(run.file(PACKED), model.state_dict(), masks.state_dict(), half=options.half)
        metrics["dense_file_bytes"] = os.path.getsize(run.file("model.safetensors"))
        metrics["packed_file_bytes"] = packed
        metrics["file_size_ratio"] = metrics["dense_file_bytes"] / packed
        restored = load_packed(run.file(PACKED))
        metrics["packed_roundtrip_exact"] = (not options.half) and all(
            torch.equal(restored[k], v.cpu()) for k, v in model.state_dict().items()
        )
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _theta_of_result(history: dict[str, Any]) -> dict[str, float]:
    """The search point of the round the final model comes from (the kept one's, if one was kept)."""
    rounds = history["rounds"]
    if not rounds:
        return {}
    best = history.get("best")
    return rounds[best["round"] - 1]["theta"] if best and best["round"] >= 1 else rounds[-1]["theta"]


def _load_history(run) -> dict[str, Any] | None:
    if run is None or not run.has(HISTORY):
        return None
    return read_json(run.file(HISTORY))


def _save_history(run, history: dict[str, Any]) -> None:
    if run is not None:
        write_json(run.file(HISTORY), history)
