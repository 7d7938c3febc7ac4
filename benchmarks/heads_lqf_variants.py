"""LQF with a fixed head: do variants of the linear model close the gap to the learned head?

With a learned head, LQF's linear model contains the probe on the pretrained features,
``dW f(x; w0)``, and sees the backbone's tangent features through the probe's rows, which point
along the classes. A fixed head has neither: its matrix is fixed (only its scale and bias are
linearized), so the classes must come from the backbone's tangent features alone, seen through
fixed random rows. Variants, each against the default (``last-3``, one solve):

* ``last-5``: more of the backbone linearized (``--linearize last-5``);
* ``relinearize-1``: a second solve around the first one's solution (``--relinearize 1``), where
  the features already point along the fixed rows, as they do along the probe's for a learned head.

Learned and fixed-orthogonal heads, fashion-mnist seeds 0-4, every other flag as in
``heads_accuracy.py``'s transfer setting; test on the whole test split (the ``last-3`` numbers
are those runs re-evaluated with ``lqf evaluate``). A diagnostic: nothing here is chosen on test.
Rows of variants whose runs are not on this machine are kept from the committed JSON.

Usage::

    python benchmarks/heads_lqf_variants.py --variants last-5          # about 80 min on one core
    python benchmarks/heads_lqf_variants.py --variants relinearize-1   # about 80 min on one core
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
BASE = "last-3"
#: variant -> the flags it adds to the default LQF run
VARIANTS = {"last-5": ["--linearize", "last-5"], "relinearize-1": ["--relinearize", "1"]}
JSON = os.path.join(RESULTS, "heads_lqf_variants.json")


def flags(head: str, seed: int, variant: str) -> list[str]:
    """The transfer setting's flags, whole test split, with the variant's flags."""
    base = list(SETTINGS["transfer"]["flags"])
    cut = base.index("--max-test")
    del base[cut : cut + 2]
    return [*base, "--data", DATA, "--method", "lqf", "--head", head, *VARIANTS[variant], "--seed", str(seed)]


def default_run(head: str, seed: int) -> str:
    """The ``last-3`` run of ``heads_accuracy.py`` for this head and seed."""
    tag = "select-seed0" if seed == 0 else f"chosen-seed{seed}"
    return os.path.join(RUNS, "transfer", DATA, "lqf", head, tag)


def committed() -> dict:
    if not os.path.isfile(JSON):
        return {}
    with open(JSON) as handle:
        return json.load(handle)


def paired(a: list[float], b: list[float]) -> str:
    per_seed, mean = paired_differences(a, b)
    return f"{mean} ({per_seed})"


def base_val(head: str) -> list[float]:
    """Validation accuracy per seed of the default runs (``heads_accuracy.json``)."""
    with open(os.path.join(RESULTS, "heads_accuracy.json")) as handle:
        entries = json.load(handle)["results"]
    entry = next(
        e
        for e in entries
        if (e["setting"], e["data"], e["method"], e["head"]) == ("transfer", DATA, "lqf", head)
    )
    return entry["val_accuracy"]["values"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    before = committed()
    rows = before.get("rows", {})
    machines = before.get("hardware_by_variant", {"last-5": before.get("hardware")})
    for head in HEADS:
        row = rows.setdefault(head, {})
        found = whole_test([default_run(head, s) for s in SEEDS], DATA)
        if found is not None and found["n_test"] == 10_000:
            row[BASE] = found["values"]
        if BASE not in row:
            raise SystemExit(f"the {BASE} runs of {head} lack a whole-split evaluation; run `lqf evaluate`")
        row[f"{BASE} val"] = base_val(head)
        for variant in args.variants:
            test, val, seconds, steps = [], [], [], []
            for seed in SEEDS:
                out = os.path.join(RUNS, "diag", variant, head, f"seed{seed}")
                metrics, _ = fit_run(out, flags(head, seed, variant))
                test.append(metrics["test_accuracy"])
                val.append(metrics["val_accuracy"])
                seconds.append(metrics["train_seconds"])
                steps.append([s["val_accuracy"] for s in metrics.get("relinearize_steps", [])])
            row |= {variant: test, f"{variant} val": val, f"{variant} train seconds": seconds}
            if any(steps):
                row[f"{variant} val per solve"] = steps
            machines[variant] = hardware()
    lines = [
        "# LQF with a fixed head: variants of the linear model",
        "",
        f"Command: `python benchmarks/heads_lqf_variants.py` (`--variants` one at a time). {DATA}, "
        f"`efficientnet_lite0`, 64 px, 50 images per class, 20 validation images per class, seeds "
        f"{', '.join(map(str, SEEDS))}; test accuracy on all 10,000 test images. One core per run, "
        "torch on the CPU; hardware: "
        + "; ".join(f"{v}: {m['cpu']}, torch {m['torch']}" for v, m in machines.items() if m)
        + f"; {BASE}: AMD EPYC (heads_accuracy.md).",
        "",
        "| head | variant | test accuracy per seed | mean test | mean val |",
        "|---|---|---|---|---|",
    ]
    shown = [BASE, *(v for v in VARIANTS if v in rows["linear"] and v in rows["fixed-orthogonal"])]
    for head in HEADS:
        for variant in shown:
            values, val = rows[head][variant], rows[head][f"{variant} val"]
            lines.append(
                f"| {head} | {variant} | {', '.join(f'{100 * v:.2f}' for v in values)} "
                f"| {100 * statistics.fmean(values):.2f} | {100 * statistics.fmean(val):.2f} |"
            )
    fixed, learned = rows["fixed-orthogonal"], rows["linear"]
    lines += ["", "Paired differences per seed, test points (mean ± standard error, then per seed):", ""]
    for variant in shown:
        difference = paired(fixed[variant], learned[variant])
        lines.append(f"- fixed-orthogonal minus linear, {variant}: {difference}")
    for variant in shown[1:]:
        for head in HEADS:
            lines.append(
                f"- {head}, {variant} minus {BASE}: {paired(rows[head][variant], rows[head][BASE])}"
                f"; validation: {paired(rows[head][f'{variant} val'], rows[head][f'{BASE} val'])}"
            )
    # each head's variant chosen on validation (mean over the seeds; a tie keeps the earlier one)
    chosen = {h: max(shown, key=lambda v, h=h: statistics.fmean(rows[h][f"{v} val"])) for h in HEADS}
    lines.append(
        "- chosen on validation per head: "
        + ", ".join(f"{h} {v}" for h, v in chosen.items())
        + "; fixed-orthogonal minus linear: "
        + paired(fixed[chosen["fixed-orthogonal"]], learned[chosen["linear"]])
    )
    for head in HEADS:
        per_solve = rows[head].get("relinearize-1 val per solve")
        if per_solve:
            cells = ", ".join("/".join(f"{100 * v:.1f}" for v in s) for s in per_solve)
            lines.append(f"- {head}, relinearize-1, validation accuracy after each solve per seed: {cells}")
    lines.append("")
    payload = {
        "command": "python benchmarks/heads_lqf_variants.py",
        "hardware_by_variant": machines,
        "rows": rows,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(JSON, "w") as handle:
        json.dump(payload, handle, indent=2)
    with open(os.path.join(RESULTS, "heads_lqf_variants.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
