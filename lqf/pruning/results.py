"""The metrics of a finished prune run, and its packed checkpoint."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from lqf.pruning.export import load_packed, save_packed
from lqf.pruning.objective import Objective
from lqf.pruning.rounds import group_fractions
from lqf.pruning.state import PACKED


def finish(model, masks, data, select, config, options, history, run, eval_batch, quiet) -> dict[str, Any]:
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
        "theta": theta_of_result(history),
        "group_fractions": group_fractions(counts),
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


def theta_of_result(history: dict[str, Any]) -> dict[str, float]:
    """The search point of the round the final model comes from (the kept one's, if one was kept)."""
    rounds = history["rounds"]
    if not rounds:
        return {}
    best = history.get("best")
    return rounds[best["round"] - 1]["theta"] if best and best["round"] >= 1 else rounds[-1]["theta"]
