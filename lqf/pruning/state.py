"""The resumable state of a prune run: its plan of steps, history file, checkpoints and snapshots.

A run is a list of steps (:func:`plan`); after every step the history
(``history.json``: trials, rounds, candidates, timings) and a checkpoint
(weights and masks) are written, so an interrupted run repeats at most the
step it was in. The kept candidate (``best.pt``) and the models after each
round's fine-tuning (``round{r}.pt``, while a back-off may return to them) are
written atomically too.
"""

from __future__ import annotations

from typing import Any

import torch

from lqf.errors import LqfError
from lqf.io import atomic_write, read_json, write_json
from lqf.pruning.options import PruneOptions

HISTORY = "history.json"
PACKED = "model.packed.safetensors"
PARETO = "pareto.png"
BEST = "best.pt"
#: the model and masks after round ``r``'s fine-tuning, kept while the run may back off to them
SNAPSHOT = "round{}.pt"
RATES = "rates.png"


def plan(options: PruneOptions) -> list[tuple[str, int]]:
    """The steps of a run: ``("search", r)``, ``("tune", epochs)``, ``("prune", 0)``."""
    if options.searched:
        steps: list[tuple[str, int]] = []
        for r in range(1, options.rounds + 1):
            steps += [("search", r), ("tune", options.round_epochs)]
        return steps + [("tune", options.final_epochs)]
    return [("prune", 0), ("tune", options.tune_epochs)]


def state_of(model, masks) -> dict[str, Any]:
    """A CPU copy of the model's and the masks' state."""
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "masks": {k: v.cpu().clone() for k, v in masks.state_dict().items()},
    }


def load_state(model, masks, state, run, name: str, what: str) -> None:
    """Load ``state`` (or, if ``None``, the file ``name`` of ``run``) into the model and masks."""
    if state is None and run is not None and run.has(name):
        state = torch.load(run.file(name), map_location="cpu", weights_only=False)
    if state is None:
        raise LqfError(f"this prune run has lost its {what}; run it again without --resume")
    model.load_state_dict(state["model"])
    masks.load_state_dict(state["masks"])


def save_snapshot(run, snapshots: dict[int, dict[str, Any]], r: int, model, masks) -> None:
    """Keep the model and masks after round ``r``'s fine-tuning (a file in ``run``, else memory)."""
    state = state_of(model, masks)
    if run is None:
        snapshots[r] = state
    else:
        atomic_write(run.file(SNAPSHOT.format(r)), lambda tmp: torch.save(state, tmp))


def load_history(run) -> dict[str, Any] | None:
    if run is None or not run.has(HISTORY):
        return None
    return read_json(run.file(HISTORY))


def save_history(run, history: dict[str, Any]) -> None:
    if run is not None:
        write_json(run.file(HISTORY), history)
