"""One step of pruning: a search round (Bayesian optimisation over the round's space) and the
one-shot baselines (uniform or global pruning to a target compression)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lqf.pruning.layers import PrunableLayer
from lqf.pruning.masks import global_masks, layer_masks, theta_for_compression
from lqf.pruning.objective import Objective
from lqf.pruning.search import search_round
from lqf.pruning.spaces import FractionSpace, make_space
from lqf.pruning.state import save_history


def search_step(
    round_index,
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
    coordinator=None,
):
    """Round ``round_index``: search its space for the best ``theta`` by ``measure`` (warm-started from
    the previous round's best trials and the global-threshold starts), then apply its masks.
    With a ``coordinator`` (:class:`lqf.pruning.shared.Coordinator`) the round's trials are shared
    with the worker processes of its study."""
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
        ranked = sorted(previous, key=lambda t: rank(objective, t), reverse=True)
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
        save_history(run, history)
        next(bar, None)

    sampler = "gp" if options.strategy == "bo" else "random"
    seed = config.seed * 1000 + round_index
    if coordinator is None:
        records = search_round(
            space=space,
            evaluate=measure,
            objective=objective,
            trials=options.trials,
            sampler=sampler,
            seed=seed,
            startup_trials=options.startup_trials,
            warm=warm,
            done=done,
            on_trial=record,
            round_index=round_index,
        )
    else:
        from lqf.pruning.state import state_of

        records = coordinator.search(
            round_index,
            space=space,
            measure=measure,
            objective=objective,
            trials=options.trials,
            sampler=sampler,
            seed=seed,
            startup_trials=options.startup_trials,
            warm=warm,
            state=state_of(model, masks),
            folder=run.path,
            on_record=lambda trial: next(bar, None),
        )
        history["trials"] = [t for t in history["trials"] if t["round"] != round_index] + records
        save_history(run, history)
        by_workers = sum(r["worker"] != "coordinator" for r in records)
        say(f"round {round_index}: {len(records)} trials, {by_workers} of them by worker processes")
    best = objective.best(records)
    masks.update(space.masks(best["theta"]))
    counts = masks.counts()
    history["rounds"] = [r for r in history["rounds"] if r["round"] != round_index]
    history["rounds"].append(
        {k: best[k] for k in ("round", "number", "theta", "accuracy", "drop", "removed", "compression")}
        | {"reference": objective.reference, "space": space.name, "fractions": group_fractions(counts)}
    )
    say(
        f"round {round_index}: chose trial {best['number']} of {len(records)}: compression "
        f"{best['compression']:.2f}x, val subset accuracy {100 * best['accuracy']:.2f}% "
        f"(drop {best['drop']:+.2f} points, before fine-tuning)"
    )


def group_fractions(counts) -> dict[str, float]:
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


def rank(objective: Objective, trial: dict[str, Any]) -> tuple:
    if objective.constrained:
        return (trial["feasible"], trial["removed"] if trial["feasible"] else trial["accuracy"])
    return (True, trial["value"])


def prune_once(layers, masks, options, history, say):
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
