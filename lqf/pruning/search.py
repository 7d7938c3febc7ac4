"""One search round over the per-group pruning fractions ``theta``.

The loop is ours; Optuna only proposes points (ask/tell). With
``sampler="gp"`` the proposals come from Optuna's ``GPSampler``: a Gaussian
process over the box of the search space (:mod:`lqf.pruning.spaces`) and
expected improvement, in the
constraint form weighted by the probability that a second GP (fitted to the
accuracy drop) predicts the point feasible. ``sampler="random"`` draws
``theta`` uniformly in the box (log-uniformly along a log dimension: the
random-search baseline).

A trial costs one call of ``evaluate(theta)`` (accuracy of the current
weights with the trial's masks, on a validation subset) plus the sampler's
time; both are recorded per trial, so the share of the GP's overhead can be
reported.

Warm start: the weights change between rounds (they are fine-tuned under the
previous masks), so a previous round's accuracies are no longer observations
of the current objective, and feeding them to the GP as such would be
unsound. What carries over is *where* to look: each round first re-evaluates
the best configurations of the previous round on the current weights (queued
with ``enqueue_trial``), and the GP starts from those. Within a round the
weights are fixed, so trials finished before an interruption are exact
observations and are handed back to the GP with ``add_trial`` instead of
being recomputed. The caller may also queue other informed starting points
(:func:`lqf.pruning.rounds.global_starts`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from lqf.pruning.objective import Objective

SAMPLERS = ("gp", "random")
CONSTRAINT = "accuracy_drop"


def make_sampler(kind: str, *, seed: int, startup_trials: int):
    """Optuna's ``GPSampler`` (``gp``) or ``RandomSampler`` (``random``), seeded."""
    optuna = _optuna()
    if kind == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(
                seed=seed, n_startup_trials=startup_trials, deterministic_objective=True
            )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}; valid: {', '.join(SAMPLERS)}")


def search_round(
    *,
    space,
    evaluate: Callable[[Mapping[str, float]], float],
    objective: Objective,
    trials: int,
    sampler: str = "gp",
    seed: int = 0,
    startup_trials: int = 8,
    warm: list[Mapping[str, float]] = (),
    done: list[dict[str, Any]] = (),
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    round_index: int = 1,
) -> list[dict[str, Any]]:
    """Run ``trials`` trials (``len(done)`` of them already finished); returns all records.

    Args:
        space: the search space (:mod:`lqf.pruning.spaces`): its dimensions and the exact
            compression of a point.
        evaluate: ``theta -> accuracy`` on the validation subset.
        objective: the objective and its reference accuracy.
        trials: trials in this round, warm-start trials included.
        sampler: ``gp`` or ``random``.
        seed: the sampler's seed.
        startup_trials: trials before the GP takes over (random or warm).
        warm: configurations re-evaluated first (previous round's best).
        done: records of this round's finished trials (after an interruption).
        on_trial: called with each new record (to persist it).
        round_index: stored in the records.

    Each record holds ``theta``, ``accuracy``, ``removed``, ``compression``,
    ``drop``, ``value``, ``feasible``, ``sampler_seconds``, ``eval_seconds``.
    """
    optuna = _optuna()
    bounds = space.bounds()
    distributions = distributions_of(space)
    clip = lambda point: clip_to(space, point)
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(sampler, seed=seed, startup_trials=startup_trials)
    )
    records = [dict(r) for r in done]
    for r in records:
        frozen = optuna.trial.create_trial(
            params=clip(r["theta"]),
            distributions=distributions,
            value=r["value"],
        )
        if objective.constrained:
            frozen.set_constraint(CONSTRAINT, objective.violation(r["accuracy"]))
        study.add_trial(frozen)
    for point in list(warm)[len(records) :]:
        study.enqueue_trial(clip(point))
    for number in range(len(records), trials):
        start = time.perf_counter()
        trial = study.ask(distributions)
        asked = time.perf_counter()
        theta = {name: float(trial.params[name]) for name in bounds}
        accuracy = float(evaluate(theta))
        evaluated = time.perf_counter()
        if objective.constrained:
            trial.set_constraint(CONSTRAINT, objective.violation(accuracy))
        record = trial_record(
            theta,
            accuracy,
            space=space,
            objective=objective,
            round_index=round_index,
            number=number,
            warm=number < len(warm),
            eval_seconds=evaluated - asked,
        )
        study.tell(trial, record["value"])
        record["sampler_seconds"] = asked - start + time.perf_counter() - evaluated
        records.append(record)
        if on_trial is not None:
            on_trial(record)
    return records


def trial_record(
    theta: Mapping[str, float],
    accuracy: float,
    *,
    space,
    objective: Objective,
    round_index: int,
    number: int,
    warm: bool,
    eval_seconds: float,
) -> dict[str, Any]:
    """What a trial is remembered by: its ``theta``, accuracy, drop, compression and value."""
    removed = space.compression(theta)
    return {
        "round": round_index,
        "number": number,
        "theta": dict(theta),
        "warm": warm,  # a queued start (previous round's best, or a global-threshold one)
        "accuracy": accuracy,
        "drop": objective.drop(accuracy),
        "removed": removed.removed,
        "compression": removed.rate,
        "value": objective.value(accuracy, removed.removed),
        "feasible": objective.feasible(accuracy),
        "sampler_seconds": 0.0,
        "eval_seconds": eval_seconds,
    }


def distributions_of(space) -> dict[str, Any]:
    """Optuna's distributions of the space's box."""
    optuna = _optuna()
    return {
        name: optuna.distributions.FloatDistribution(low, high, log=log)
        for name, (low, high, log) in space.bounds().items()
    }


def clip_to(space, point: Mapping[str, float]) -> dict[str, float]:
    """``point`` moved into the space's box."""
    return {name: min(high, max(low, float(point[name]))) for name, (low, high, _) in space.bounds().items()}


def _optuna():
    try:
        import optuna
    except ImportError:
        from lqf.errors import LqfError

        raise LqfError(
            "pruning needs optuna: pip install 'optuna>=5.0' (or pip install -e .[prune])"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna
