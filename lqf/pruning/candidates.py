"""The candidates of a prune run: which fine-tuned model is kept, and the back-off that undoes
rounds while none is within the target.

After every fine-tuning phase the model is a candidate (:func:`keep_if_best`); the
run ends with the most compressed one within ``--target-drop`` of the unpruned
model (:func:`restore_best`). Without one, :func:`back_off` undoes rounds from
the last (:func:`undo_reason` says whether and why).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lqf.io import atomic_write
from lqf.pruning import tuning
from lqf.pruning.options import PruneOptions
from lqf.pruning.state import BEST, SNAPSHOT, load_state, plan, save_history, state_of


def undo_reason(undone: int, options: PruneOptions, history: dict[str, Any]) -> str | None:
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


def back_off(
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
    (judged by ``judge(model, val)``); ``why`` (from ``undo_reason``) opens the message."""
    started = time.perf_counter()
    load_state(model, masks, snapshots.get(undone - 1), run, SNAPSHOT.format(undone - 1), "saved rounds")
    say(
        f"{why}: undoing round {undone} "
        f"(back to {masks.counts().rate:.2f}x) and fine-tuning {options.final_epochs} epoch(s)"
    )
    final = len(plan(options)) - 1  # the same learning-rate schedule as the final phase
    val = tuning.tune(
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
    keep_if_best(model, masks, judge(model, val), index, options, history, run, kept, round_index=undone - 1)
    entry = {**history["candidates"][-1], "round": undone}  # the round undone
    history["back_off"] = [b for b in history.get("back_off", []) if b["step"] != index] + [entry]
    history["steps"] = [s for s in history["steps"] if s["step"] != index]
    history["steps"].append({"step": index, "kind": "back-off", "seconds": time.perf_counter() - started})
    save_history(run, history)
    if run is not None:
        run.save_checkpoint({"step": index, "model": model.state_dict(), "masks": masks.state_dict()})


def keep_if_best(model, masks, val, step, options, history, run, kept, round_index=None) -> None:
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
    kept["state"] = state_of(model, masks)
    kept["step"] = step
    if run is not None:
        atomic_write(run.file(BEST), lambda tmp: torch.save(kept["state"], tmp))
    history["best"] = entry
    save_history(run, history)


def restore_best(model, masks, history, run, last, say, kept, options, unpruned) -> None:
    """End with the kept model (if it is not the final one already). Without one within the
    target, end with the unpruned model ``unpruned`` (a :func:`state_of`), or with the last one
    under ``--allow-over-target``."""
    best = history.get("best")
    if best is None:
        if options.allow_over_target:
            say(
                f"WARNING: no fine-tuned candidate was within {options.epsilon:g} points of validation "
                "drop: ending with the last pruned model, over the target (--allow-over-target)"
            )
            return
        model.load_state_dict(unpruned["model"])
        masks.load_state_dict(unpruned["masks"])
        history["fallback"] = "unpruned"
        save_history(run, history)
        say(
            f"WARNING: no fine-tuned candidate was within {options.epsilon:g} points of validation drop: "
            "ending with the unpruned model (1.00x); more --final-epochs, a larger --target-drop or "
            "fewer --rounds may find one, and --allow-over-target keeps the last pruned model instead"
        )
        return
    if best["step"] == last:
        return
    state = kept.get("state") if kept.get("step") == best["step"] else None
    load_state(model, masks, state, run, BEST, "kept model")
    say(
        f"kept the model after step {best['step'] + 1}: compression {best['compression']:.2f}x, "
        f"val drop {best['drop']:+.2f} points (the final one was less compressed or over the target)"
    )
