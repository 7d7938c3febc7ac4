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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lqf.config import FitConfig
from lqf.errors import LqfError
from lqf.pruning import tuning
from lqf.pruning.candidates import back_off, keep_if_best, restore_best, undo_reason
from lqf.pruning.layers import groups_of
from lqf.pruning.masks import MaskSet
from lqf.pruning.measure import search_inputs
from lqf.pruning.objective import Objective
from lqf.pruning.options import PruneOptions
from lqf.pruning.results import finish
from lqf.pruning.rounds import prune_once, search_step
from lqf.pruning.state import (
    PARETO,
    RATES,
    SNAPSHOT,
    load_history,
    plan,
    save_history,
    save_snapshot,
    state_of,
)


@dataclass
class PruneResult:
    """What :func:`prune` returns: the pruned model, its masks and metrics."""

    model: nn.Module
    masks: MaskSet
    metrics: dict[str, Any]
    history: dict[str, Any]


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
    inputs = search_inputs(model, data, config, options)
    layers, search_data, select, subset = inputs.layers, inputs.search_data, inputs.select, inputs.subset
    measure, eval_batch = inputs.measure, inputs.eval_batch
    groups = groups_of(layers)
    masks = MaskSet(layers)
    unpruned = state_of(model, masks)  # the fall-back when no pruned candidate is within the target

    def judge(model: nn.Module, val: float | None = None) -> float:
        """The accuracy the candidates are judged by (``val``: the search split's, when it is that)."""
        if select is None and val is not None:
            return val
        return evaluate(model, data.val if select is None else select, batch_size=eval_batch, device=device)[
            "accuracy"
        ]

    history = load_history(run) if resume else None
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
        save_history(run, history)
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
    coordinator = None
    if options.storage is not None:
        from lqf.pruning.shared import Coordinator
        from lqf.pruning.storage import open_storage

        if run is None:
            raise LqfError("a shared search (--storage) needs a run directory its workers can read")
        coordinator = Coordinator(
            open_storage(options.storage, options.heartbeat),
            options.study,
            run.path,
            workers=options.workers,
            say=say,
        )
    for index, (kind, arg) in enumerate(steps):
        if index < first:
            continue
        step_start = time.perf_counter()
        if kind == "search":
            search_step(
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
                coordinator=coordinator,
            )
        elif kind == "prune":
            prune_once(layers, masks, options, history, say)
        elif arg > 0:
            val = tuning.tune(
                model,
                masks,
                search_data,
                config,
                options,
                arg,
                index,
                run,
                quiet,
                history,
                say,
                teacher=teacher,
            )
            if keeping:
                keep_if_best(model, masks, judge(model, val), index, options, history, run, kept)
        if kind == "tune" and options.rounds - undo <= (index + 1) // 2 < options.rounds:
            save_snapshot(run, snapshots, (index + 1) // 2, model, masks)
        history["steps"] = [s for s in history["steps"] if s["step"] != index]
        history["steps"].append({"step": index, "kind": kind, "seconds": time.perf_counter() - step_start})
        save_history(run, history)
        if run is not None:
            run.save_checkpoint({"step": index, "model": model.state_dict(), "masks": masks.state_dict()})
    if keeping:
        if steps[last][1] == 0:  # no final fine-tuning: the model as the last search left it
            model.eval()
            keep_if_best(model, masks, judge(model), last, options, history, run, kept)
        for k in range(undo):
            why = undo_reason(options.rounds - k, options, history)
            if why is None:
                break
            last = len(steps) + k
            if last >= first:
                back_off(
                    why,
                    options.rounds - k,
                    last,
                    model,
                    masks,
                    search_data,
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
        restore_best(model, masks, history, run, last, say, kept, options, unpruned)
    model.eval()
    if coordinator is not None:
        coordinator.finish(run.path, options.rounds)
    metrics = finish(model, masks, data, select, config, options, history, run, eval_batch, quiet)
    for r in range(1, options.rounds):  # only a resumed back-off needs them
        if run is not None and run.has(SNAPSHOT.format(r)):
            os.remove(run.file(SNAPSHOT.format(r)))
    metrics["wall_seconds_this_process"] = time.perf_counter() - started
    if options.searched and objective.constrained:
        judged = metrics.get("select_drop_points", metrics["val_drop_points"])
        metrics["within_target"] = judged <= options.epsilon + 1e-9
        if history.get("fallback"):
            metrics["fallback"] = history["fallback"]
    if run is not None:
        run.write_metrics(metrics)
        from lqf.pruning.plots import plot_pareto, plot_rates

        plot_pareto(
            history, metrics, run.file(PARETO), title=f"{options.strategy}: {config.model} on {config.data}"
        )
        plot_rates(masks.counts(), run.file(RATES), title=f"per-layer pruning ({options.strategy})")
    return PruneResult(model=model, masks=masks, metrics=metrics, history=history)
