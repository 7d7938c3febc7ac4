"""Fine-Pruning with 8 fine-tuning epochs: how far one-shot global pruning goes, and the joint loop.

``benchmarks/pruning.py`` gives every method 4 epochs of fine-tuning after pruning. Here the
budget is 8 epochs for every configuration, on fashion-mnist (the fine-tuned
``efficientnet_lite0`` of ``benchmarks/pruning.py``, 200 images per class, 50 validation images
per class, 64 px; test on a fixed stratified 2,000 images):

* ``global`` pruned once to 5x, 8x and 11x, then fine-tuned in one 8-epoch phase;
* one search round (``bo``, and ``random`` search), the most compressed rates that lose at most
  20 points before fine-tuning, then one 8-epoch phase: the searched per-layer rates against the
  global threshold's at about the same compression;
* the joint loop (``bo``) with each round's drop measured from the current model
  (``--round-reference current``), ending with the most compressed model within 1 point of
  validation accuracy (``--keep-best``): short rounds (6 x 1 epoch + 2, drop 3 points per round),
  long rounds (2 x 3 + 2, drop 20), and long rounds with one cosine learning rate over all phases
  (3 x 2 + 2, ``--tune-schedule continuous``); these search per-group fractions
  (``--space fraction``);
* the joint loop in the threshold space (``--space threshold``, the default) with six schedules
  and round drops; the most compressed of them within one point of validation accuracy is the
  configuration of the ``threshold`` setting of ``benchmarks/pruning.py``.

Every run is one ``python -m lqf prune`` process cached under
``benchmarks/runs/pruning/fashion-mnist/budget/``.

Usage::

    python benchmarks/pruning_budget.py [--cached]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from common import hardware  # noqa: E402
from pruning import THRESHOLD_SEARCH, TUNE_LR, best_within, finetune, prune  # noqa: E402

DATA = "fashion-mnist"
SETTING = "budget"  # the runs live in benchmarks/runs/pruning/fashion-mnist/budget/
ONCE = ["--rounds", "1", "--round-epochs", "0", "--final-epochs", "8", *TUNE_LR]
LOOP = ["--strategy", "bo", "--target-drop", "1", "--round-reference", "current"]
LOOP += ["--trials", "10", "--startup-trials", "4", "--space", "fraction", *TUNE_LR]
#: the threshold space (one global magnitude threshold times a factor per stage group)
THRESHOLD = ["--strategy", "bo", *THRESHOLD_SEARCH, *TUNE_LR]


def schedule(base: list[str], rounds: int, round_epochs: int, final: int, drop: int) -> list[str]:
    """``base`` with ``rounds`` search rounds of ``round_epochs``, ``final`` epochs and a round drop."""
    flags = [*base, "--round-drop", str(drop), "--rounds", str(rounds)]
    return flags + ["--round-epochs", str(round_epochs), "--final-epochs", str(final)]


#: name -> (run directory, flags)
CONFIGS = {
    "global 5x": ("g5-8", ["--strategy", "global", "--target-compression", "5", *ONCE]),
    "global 8x": ("g8-8", ["--strategy", "global", "--target-compression", "8", *ONCE]),
    "global 11x": ("g11-8", ["--strategy", "global", "--target-compression", "11", *ONCE]),
    "bo, 6 rounds x 1 epoch + 2, round drop 3": ("bo-cur3", schedule(LOOP, 6, 1, 2, 3)),
    "bo, 1 round, drop <= 20 before one 8-epoch phase": (
        "bo-once20",
        ["--strategy", "bo", "--target-drop", "20", "--trials", "10", "--startup-trials", "4", *ONCE]
        + ["--space", "fraction"],
    ),
    "random, 1 round, drop <= 20 before one 8-epoch phase": (
        "random-once20",
        ["--strategy", "random", "--target-drop", "20", "--trials", "10", "--startup-trials", "4", *ONCE]
        + ["--space", "fraction"],
    ),
    "bo, 2 rounds x 3 epochs + 2, round drop 20": ("bo-cur20", schedule(LOOP, 2, 3, 2, 20)),
    "bo, 3 rounds x 2 epochs + 2, round drop 20, continuous": (
        "bo-cont",
        schedule(LOOP, 3, 2, 2, 20) + ["--tune-schedule", "continuous"],
    ),
}
#: the threshold-space schedules: (rounds, epochs per round, final epochs, round drop) -> run directory
THRESHOLD_SCHEDULES = {
    (2, 2, 4, 6): "thr-2x2-d6",
    (3, 2, 2, 8): "thr-3x2",
    (3, 1, 5, 4): "thr-3x1-d4",
    (3, 1, 5, 8): "thr-3x1-d8",
    (4, 1, 4, 3): "thr-4x1-d3",
    (4, 1, 4, 6): "thr-4x1",
}
for (r, e, f, d), tag in THRESHOLD_SCHEDULES.items():
    name = f"bo threshold, {r} rounds x {e} epoch{'s' if e > 1 else ''} + {f}, round drop {d}"
    CONFIGS[name] = (tag, schedule(THRESHOLD, r, e, f, d))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cached", action="store_true", help="report finished runs only")
    args = parser.parse_args(argv)
    source = finetune(DATA, None)
    rows = []
    for name, (tag, flags) in CONFIGS.items():
        r = prune(DATA, tag, source, flags, None, SETTING, args.cached)
        if r is not None:
            rows.append({"name": name, "flags": flags, **r})
    payload = {"command": "python benchmarks/pruning_budget.py", "hardware": hardware(), "results": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "pruning_budget.json"), "w") as handle:
        json.dump(payload, handle, indent=1)
    ref = rows[0] if rows else None
    lines = [
        "# Fine-Pruning with 8 fine-tuning epochs",
        "",
        f"Command: `{payload['command']}`. Hardware: {payload['hardware']['cpu']}, "
        f"{payload['hardware']['cores']} cores, torch {payload['hardware']['torch']} on the CPU; the "
        "`fraction` runs shared the 2 cores with other jobs, so their seconds are upper bounds.",
        "",
        "`efficientnet_lite0` fine-tuned on fashion-mnist (200 images per class, seed 0, 15 epochs; "
        + (
            f"unpruned: val {100 * ref['reference_val_accuracy']:.2f}% on 500 images, test "
            f"{100 * ref['reference_test_accuracy']:.2f}% on a fixed 2,000"
            if ref
            else "no runs"
        )
        + "), then pruned; every configuration gets 8 epochs of fine-tuning after pruning (AdamW 3e-4). "
        "Drops are points below the unpruned model; compression = prunable parameters / kept.",
        "",
        "| configuration | compression | val drop | test drop | packed MiB | s "
        "| per round (before fine-tuning) | after each fine-tuning phase (val drop) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rounds = ", ".join(f"{x['compression']:.2f}x ({x['drop']:+.1f})" for x in r["rounds"] if "drop" in x)
        after = ", ".join(f"{c['compression']:.2f}x ({c['drop']:+.1f})" for c in r.get("candidates") or [])
        lines.append(
            f"| {r['name']} | {r['compression']:.2f}x | {r['val_drop_points']:+.2f} | "
            f"{r['test_drop_points']:+.2f} | {r['packed_file_bytes'] / 2**20:.2f} | {r['seconds']:.0f} | "
            f"{rounds or '-'} | {after or '-'} |"
        )
    lines += [
        "",
        "In the joint loop each round's drop is measured from the model the previous round's "
        "fine-tuning left; the run ends with the most compressed model after a fine-tuning phase "
        "whose validation drop is within 1 point (at equal compression the more accurate one), or "
        "with the last one if none is. The `fraction` searches choose one fraction per layer group "
        "(`--groups stage`, 10 groups) and prune each layer of a group by that fraction of its own "
        "weights; their first trials are the group fractions a global threshold gives (1.5x, 2.6x, "
        "4.6x, 8x). The one-shot global strategy prunes by one threshold across all 49 layers, so its "
        "per-layer fractions are free. The `threshold` searches (`--space threshold`) choose how much "
        "more compression one global threshold adds in the round (at most 3x) and a factor in "
        "[1/2, 2] on it per stage group; their first trials are the plain global threshold at 4 "
        "steps, and pruned weights stay pruned, so compression builds up round by round. They ran "
        "one per core with one thread each.",
        "",
    ]
    chosen = best_within([r for r in rows if r["name"].startswith("bo threshold")])
    if chosen:
        lines += [
            "The setting `threshold` of `benchmarks/pruning.py` uses the threshold configuration "
            "chosen here on validation: the most compressed one within 1 point of validation "
            f"accuracy, **{chosen['name']}** ({chosen['compression']:.2f}x, val drop "
            f"{chosen['val_drop_points']:+.2f}).",
            "",
        ]
    with open(os.path.join(RESULTS, "pruning_budget.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
