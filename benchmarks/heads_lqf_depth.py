"""LQF with a fixed head: does linearizing more of the backbone close the gap to the learned head?

With a learned head, LQF's linear model contains the probe on the pretrained features,
``dW f(x; w0)``, besides the backbone's tangent features seen through the probe's rows. A fixed
head has no such term (its matrix is fixed; only its scale and bias are linearized), so its
linear model has to express the classes through the backbone's tangent features alone. This
script measures whether more of them help: LQF with ``--linearize last-5`` instead of the default
``last-3``, learned and fixed-orthogonal heads, fashion-mnist seeds 0-4, every other flag as in
``heads_accuracy.py``'s transfer setting; test on the whole test split (the ``last-3`` numbers
are those runs re-evaluated with ``lqf evaluate``). A diagnostic: nothing here is chosen on test.

Usage::

    python benchmarks/heads_lqf_depth.py            # about 80 min on one core
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from common import fit_run, hardware  # noqa: E402
from heads_accuracy import METHOD_SEEDS, RUNS, SETTINGS, paired_differences, whole_test  # noqa: E402

DATA = "fashion-mnist"
HEADS = ("linear", "fixed-orthogonal")
SEEDS = METHOD_SEEDS["lqf"]
DEPTH = "last-5"


def flags(head: str, seed: int) -> list[str]:
    """The transfer setting's flags, whole test split, with ``--linearize DEPTH``."""
    base = list(SETTINGS["transfer"]["flags"])
    cut = base.index("--max-test")
    del base[cut : cut + 2]
    return [
        *base,
        "--data",
        DATA,
        "--method",
        "lqf",
        "--head",
        head,
        "--linearize",
        DEPTH,
        "--seed",
        str(seed),
    ]


def default_run(head: str, seed: int) -> str:
    """The ``last-3`` run of ``heads_accuracy.py`` for this head and seed."""
    tag = "select-seed0" if seed == 0 else f"chosen-seed{seed}"
    return os.path.join(RUNS, "transfer", DATA, "lqf", head, tag)


def last3_whole_test(head: str) -> list[float]:
    """Per-seed test accuracy of the ``last-3`` runs on the whole test split."""
    found = whole_test([default_run(head, s) for s in SEEDS], DATA)
    if found is None or found["n_test"] != 10_000:
        raise SystemExit(
            f"the last-3 runs of {head} lack a whole-split evaluation; run `lqf evaluate RUN_DIR`"
        )
    return found["values"]


def paired(a: list[float], b: list[float]) -> str:
    per_seed, mean = paired_differences(a, b)
    return f"{mean} ({per_seed})"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    rows = {}
    for head in HEADS:
        deep, val, seconds = [], [], []
        for seed in SEEDS:
            metrics, _ = fit_run(os.path.join(RUNS, "diag", DEPTH, head, f"seed{seed}"), flags(head, seed))
            deep.append(metrics["test_accuracy"])
            val.append(metrics["val_accuracy"])
            seconds.append(metrics["train_seconds"])
        rows[head] = {
            "last-3": last3_whole_test(head),
            DEPTH: deep,
            f"{DEPTH} val": val,
            f"{DEPTH} train seconds": seconds,
        }
    fixed, learned = rows["fixed-orthogonal"], rows["linear"]
    machine = hardware()
    lines = [
        "# LQF with a fixed head: more linearized units",
        "",
        f"Command: `python benchmarks/heads_lqf_depth.py`. Hardware: {machine['cpu']}, one core per run, "
        f"torch {machine['torch']} on the CPU. {DATA}, `efficientnet_lite0`, 64 px, 50 images per class, "
        f"seeds {', '.join(map(str, SEEDS))}; test accuracy on all 10,000 test images.",
        "",
        "| head | linearized | test accuracy per seed | mean |",
        "|---|---|---|---|",
    ]
    for head, row in rows.items():
        for depth in ("last-3", DEPTH):
            values = row[depth]
            lines.append(
                f"| {head} | {depth} | {', '.join(f'{100 * v:.2f}' for v in values)} "
                f"| {100 * statistics.fmean(values):.2f} |"
            )
    lines += [
        "",
        "Paired differences per seed, points (mean ± standard error, then per seed):",
        "",
        f"- fixed-orthogonal minus linear, last-3: {paired(fixed['last-3'], learned['last-3'])}",
        f"- fixed-orthogonal minus linear, {DEPTH}: {paired(fixed[DEPTH], learned[DEPTH])}",
        f"- fixed-orthogonal, {DEPTH} minus last-3: {paired(fixed[DEPTH], fixed['last-3'])}",
        f"- linear, {DEPTH} minus last-3: {paired(learned[DEPTH], learned['last-3'])}",
        "",
    ]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "heads_lqf_depth.json"), "w") as handle:
        json.dump(
            {"command": "python benchmarks/heads_lqf_depth.py", "hardware": machine, "rows": rows},
            handle,
            indent=2,
        )
    with open(os.path.join(RESULTS, "heads_lqf_depth.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
