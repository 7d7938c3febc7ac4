"""LQF accuracy benchmark: linear probe, LQF and its ablations, against fine-tuning.

``efficientnet_lite0`` (ImageNet weights) at 64 px on fashion-mnist and
animal-mnist, 5, 10, 25 and 200 training images per class, seeds 0, 1, 2, the
full test sets. Every run is one ``python -m lqf fit`` process whose run
directory is kept under ``benchmarks/runs/lqf/`` (finished runs are reused, so
an interrupted benchmark resumes).

Stages (``--stages``):

* ``main``: ``lqf`` with its defaults at 10 and 200 shots (it chooses its ridge
  strength on the validation split, never on test); fine-tuning and the ridge
  linear probe at these sizes are read from ``benchmarks/results/baseline.json``
  (same protocol, seeds and test sets);
* ``ablations``: at 10 shots, Leaky-ReLU (slopes 0.01 and 0.1; at 0.1 with and without
  the ReLU6 clip, and repaired by 100 distillation steps); the mini-batch route
  (preconditioned SGD, 30 epochs) with K-FAC, without it, and with cross-entropy
  instead of MSE; at 5, 25 and 200 shots, Leaky-ReLU at slope 0.01 and the three
  mini-batch variants (at 200 shots 4 epochs, seed 0, the learning rate chosen at 25);
* ``fewshot``: ``lqf`` at 5 and 25 shots; fine-tuning (its settings chosen on
  validation from the same grid as at 10 and 200 shots) and the ridge probe at these
  sizes are read from ``benchmarks/results/baseline_fewshot.json``, written by
  ``python benchmarks/baseline.py --shots 5 25 --name baseline_fewshot``.

Usage::

    python benchmarks/lqf_accuracy.py [--stages main ablations fewshot]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(HERE, "runs", "lqf")
sys.path.insert(0, HERE)
from common import fit_run, hardware, summarise  # noqa: E402

DATA = ("fashion-mnist", "animal-mnist")
SHOTS = (5, 10, 25, 200)
SEEDS = (0, 1, 2)
COMMON = ["--model", "efficientnet_lite0", "--image-size", "64", "--val-per-class", "20"]
SGD = ["--method", "lqf", "--solver", "sgd", "--epochs", "30", "--batch-size", "32"]
VARIANTS = {
    "linear-probe": ["--method", "linear-probe"],
    "lqf": ["--method", "lqf"],
    "lqf, leaky 0.1": ["--method", "lqf", "--leaky-slope", "0.1"],
    "lqf, leaky 0.1, no clip": ["--method", "lqf", "--leaky-slope", "0.1", "--no-leaky-clip"],
    "lqf, leaky 0.1, repaired": ["--method", "lqf", "--leaky-slope", "0.1", "--repair-steps", "100"],
    "lqf, leaky 0.01": ["--method", "lqf", "--leaky-slope", "0.01"],
    "lqf sgd, kfac": [*SGD, "--preconditioner", "kfac"],
    "lqf sgd, no kfac": [*SGD, "--preconditioner", "none"],
    "lqf sgd, kfac, ce": [*SGD, "--preconditioner", "kfac", "--lqf-loss", "ce"],
}
#: the ablations also run at 5, 25 and 200 shots: one change of LQF removed (or added) at a time
FEW_SHOT_ABLATIONS = ("lqf, leaky 0.01", "lqf sgd, kfac", "lqf sgd, no kfac", "lqf sgd, kfac, ce")
#: learning-rate grids of the mini-batch route, chosen on validation with seed 0 per data set
#: (the exact solvers need none)
GRIDS = {v: [["--lqf-lr", lr] for lr in ("1e-4", "1e-3", "1e-2")] for v in VARIANTS if "sgd" in v}
#: CG settings for the many-shot problems (N C = 20,000 rows): a looser tolerance and fewer
#: iterations per penalty value keep a run within minutes on 2 cores
MANY_SHOTS = ["--tol", "1e-3", "--max-iter", "100"]
#: the mini-batch route at 200 shots: 4 epochs (about the 240 steps of 30 epochs at 25 shots), and
#: the learning rate chosen on validation at this many shots (a grid per data set at 200 shots
#: would cost hours of CPU)
SGD_MANY_SHOTS = ["--epochs", "4"]
SELECT_AT = 25


def size_flags(variant: str, shots: int) -> list[str]:
    """Flags a run at ``shots`` per class adds to its variant's (the many-shot settings)."""
    if shots < 100 or not variant.startswith("lqf"):
        return []
    return MANY_SHOTS + (SGD_MANY_SHOTS if "sgd" in variant else [])


def flags_of(variant: str, data: str, shots: int, seed: int, extra: list[str]) -> list[str]:
    """The ``lqf fit`` flags of one run (``extra``: e.g. the chosen learning rate)."""
    return [
        *VARIANTS[variant],
        *extra,
        *["--data", data, "--shots", str(shots), "--seed", str(seed)],
        *size_flags(variant, shots),
    ]


EXECUTED: list[str] = []
LOCK = os.environ.get("LQF_BENCH_LOCK")


def run(tag: str, flags: list[str], allow_failure: bool = False) -> dict | None:
    out = os.path.join(RUNS, tag)
    # LQF_BENCH_LOCK: one run at a time with other CPU-heavy jobs on the same machine
    metrics, trained = fit_run(out, [*COMMON, *flags], lock=LOCK, allow_failure=allow_failure)
    if trained:
        EXECUTED.append(out)
    return metrics


def tag_of(variant: str, data: str, shots: int, seed: int, selected: list[str]) -> str:
    """The run directory (under ``RUNS``) of one run; ``selected``: flags of a selection-grid run."""
    name = variant.replace(", ", "-").replace(" ", "_")
    return f"{data}-{shots}/{name}{'-select' + '_'.join(selected) if selected else ''}-seed{seed}"


def select(variant: str, data: str, shots: int, cached: bool) -> tuple[list[str], list[dict]]:
    """Flags chosen on validation (seed 0) from ``GRIDS[variant]``; ``([], [])`` without a grid.

    A run that fails (a diverging learning rate stops with an error) scores no validation accuracy.
    """
    grid = GRIDS.get(variant)
    if not grid:
        return [], []
    if shots >= 100:  # the choice made at SELECT_AT shots
        chosen, _ = select(variant, data, SELECT_AT, cached=True)
        return chosen, ([{"flags": chosen, "from_shots": SELECT_AT}] if chosen else [])
    records = []
    for extra in grid:
        tag = tag_of(variant, data, shots, 0, extra)
        if cached and not os.path.isdir(os.path.join(RUNS, tag)):
            return [], []
        m = run(tag, flags_of(variant, data, shots, 0, extra), allow_failure=True)
        records.append(
            {
                "flags": extra,
                "val_accuracy": None if m is None else m["val_accuracy"],
                "test_accuracy": None if m is None else m["test_accuracy"],  # reported, never used
                "metrics": m,
            }
        )
    best = max(records, key=lambda r: -1.0 if r["val_accuracy"] is None else r["val_accuracy"])
    for r in records:
        r["chosen"] = r is best
    return best["flags"], records


def plan(stages: list[str]) -> list[tuple[str, str, int]]:
    out = []
    if "main" in stages:
        out += [("lqf", d, shots) for shots in (10, 200) for d in DATA]
    if "ablations" in stages:
        out += [(v, d, 10) for d in DATA for v in VARIANTS if v.startswith("lqf") and v != "lqf"]
        out += [(v, d, s) for s in (5, 25, 200) for d in DATA for v in FEW_SHOT_ABLATIONS]
    if "fewshot" in stages:
        out += [("lqf", d, s) for s in (5, 25) for d in DATA]
    return out


def prefetch(items: list[tuple[str, str, int]], seeds: list[int], jobs: int) -> None:
    """Train the runs of ``items`` ``jobs`` at a time: selection runs first, then the chosen seeds.

    The report loop in :func:`main` then finds every run finished. Each run is its own process,
    so set ``OMP_NUM_THREADS`` (e.g. to 1) to keep ``jobs`` of them from oversubscribing the cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    def pool(tasks: list[tuple[str, list[str], bool]]) -> None:
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            list(executor.map(lambda task: run(*task), tasks))

    first, second = [], []
    for variant, data, shots in items:
        for extra in GRIDS.get(variant) or []:
            tag = tag_of(variant, data, shots, 0, extra)
            first.append((tag, flags_of(variant, data, shots, 0, extra), True))
        if not GRIDS.get(variant):
            first += [
                (tag_of(variant, data, shots, s, []), flags_of(variant, data, shots, s, []), False)
                for s in seeds
            ]
    pool(first)
    for variant, data, shots in items:
        if GRIDS.get(variant):
            chosen, _ = select(variant, data, shots, cached=True)
            if not chosen:
                continue
            for seed in (s for s in seeds if s != 0):
                second.append(
                    (
                        tag_of(variant, data, shots, seed, []),
                        flags_of(variant, data, shots, seed, chosen),
                        False,
                    )
                )
    pool(second)


def baseline_finetune() -> list[dict]:
    rows = []
    for name in ("baseline.json", "baseline_fewshot.json"):
        path = os.path.join(RESULTS, name)
        if os.path.isfile(path):
            with open(path) as handle:
                rows += [dict(r, source=name) for r in json.load(handle)["results"]]
    names = {"finetune": "finetune", "linear-probe (ridge)": "linear-probe"}
    return [dict(r, method=names[r["method"]]) for r in rows if r["method"] in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["main", "ablations", "fewshot"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--shots", nargs="+", type=int, help="only these training sizes")
    parser.add_argument("--data", nargs="+", choices=DATA, help="only these data sets")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="only these methods")
    parser.add_argument("--cached", action="store_true", help="report finished runs only; train nothing")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    args = parser.parse_args(argv)
    started = time.time()
    items = [
        (variant, data, shots)
        for variant, data, shots in plan(args.stages)
        if not (args.shots and shots not in args.shots)
        and not (args.data and data not in args.data)
        and not (args.variants and variant not in args.variants)
    ]
    if args.jobs > 1 and not args.cached:
        prefetch(items, args.seeds, args.jobs)
    results = []
    for variant, data, shots in items:
        per_seed = []
        seeds_done = []
        chosen, selection = select(variant, data, shots, args.cached)
        if GRIDS.get(variant) and not selection:
            continue
        for seed in args.seeds:
            # seed 0 of a selected variant is its selection run itself
            tag = tag_of(variant, data, shots, seed, chosen if seed == 0 else [])
            flags = flags_of(variant, data, shots, seed, chosen)
            if args.cached and not os.path.isfile(os.path.join(RUNS, tag, "metrics.json")):
                continue
            per_seed.append(run(tag, flags))
            seeds_done.append(seed)
        if not per_seed:
            continue
        row = {
            "data": data,
            "shots": shots,
            "method": variant,
            "flags": VARIANTS[variant] + chosen,
            "selection": [{k: v for k, v in r.items() if k != "metrics"} for r in selection] or None,
            "seeds": seeds_done,
            "n_test": per_seed[0]["n_test"],
            "test_accuracy": summarise([m["test_accuracy"] for m in per_seed]),
            "val_accuracy": summarise([m["val_accuracy"] for m in per_seed]),
            "train_seconds": summarise([m["train_seconds"] for m in per_seed]),
            "peak_memory_mb": summarise([m["peak_memory_mb"] for m in per_seed]),
        }
        elsewhere = sorted({_machine(m["hardware"]) for m in per_seed if m.get("hardware")})
        if elsewhere:
            row["hardware"] = elsewhere
        for key in ("solver", "ridge_relative", "linearized_parameters", "preconditioner"):
            if key in per_seed[0]:
                row[key] = [m.get(key) for m in per_seed]
        results.append(row)
        write(results, args, time.time() - started, argv)
    write(results, args, time.time() - started, argv)
    return 0


def write(results: list[dict], args, seconds: float, argv: list[str] | None = None) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "lqf_accuracy.json")
    if os.path.isfile(path):  # keep rows of other stages and earlier invocations
        with open(path) as handle:
            old = json.load(handle)
        mine = {(r["data"], r["shots"], r["method"]) for r in results}
        results = results + [
            r
            for r in old["results"]
            if "source" not in r and (r["data"], r["shots"], r["method"]) not in mine
        ]
        commands = [c for c in old.get("commands", [old.get("command")]) if c]
    else:
        commands = []
    rows = results + [r for r in baseline_finetune() if r["shots"] in SHOTS]
    command = " ".join(["python benchmarks/lqf_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    commands = [c for c in commands if c != command and "--cached" not in c]
    if not args.cached:  # a report-only invocation trains nothing: not a command of the results
        commands.append(command)
    payload = {
        "commands": commands,
        "hardware": hardware(),
        "wall_seconds": seconds,
        "results": rows,
    }
    with open(os.path.join(RESULTS, "lqf_accuracy.json"), "w") as handle:
        json.dump(payload, handle, indent=1)
    lines = [
        "# LQF accuracy benchmark",
        "",
        "Commands: " + ", ".join(f"`{c}`" for c in payload["commands"]) + ". "
        f"Hardware: {payload['hardware']['cpu']}, "
        f"{payload['hardware']['cores']} cores, torch {payload['hardware']['torch']}. "
        + (f"Wall time of the last invocation: {seconds / 60:.0f} min. " if EXECUTED else "")
        + "Train seconds include waiting for the CPU: other jobs shared the 2 cores during these "
        "runs, so they are upper bounds. Peak MiB is the peak resident memory of the run's process.",
        "",
        "`efficientnet_lite0` (ImageNet weights), 64 px, 20 validation images per class, full test sets; "
        "test accuracy in %, mean ± sample std over the seeds counted in the table (0, 1, 2, or 0 "
        "alone; the seed changes the few-shot draw, "
        "the validation draw and the head initialisation; never the test set). Fine-tuning and the ridge "
        "linear probe come from `benchmarks/results/baseline.json` (10 and 200 shots) and "
        "`baseline_fewshot.json` (5 and 25 shots); fine-tuning's settings were chosen on validation "
        "there, from the same grid at every size.",
        "",
        "| data | shots/class | method | seeds | test accuracy | val accuracy | train s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    here = _machine(payload["hardware"])
    machines = sorted({m for r in rows for m in r.get("hardware", []) if m != here})
    for r in sorted(rows, key=lambda r: (r["data"], r["shots"], r["method"])):
        t, v = r["test_accuracy"], r["val_accuracy"]
        mark = "".join(f" ({chr(ord('a') + machines.index(m))})" for m in r.get("hardware", []) if m != here)
        lines.append(
            f"| {r['data']} | {r['shots']} | {r['method']}{mark} | {len(t['values'])} "
            f"| {100 * t['mean']:.2f} ± {100 * t['std']:.2f} "
            f"| {100 * v['mean']:.2f} | {r['train_seconds']['mean']:.0f} "
            f"| {r['peak_memory_mb']['mean']:.0f} |"
        )
    if machines:
        lines += [
            "",
            "Rows trained on another machine (train seconds are that machine's, one thread per run):",
        ]
        lines += [f"- ({chr(ord('a') + i)}) {m}" for i, m in enumerate(machines)]
    chosen = [
        f"{r['data']} / {r['shots']} shots / {r['method']}: "
        + ", ".join(_grid_point(g) for g in r["selection"])
        for r in sorted(rows, key=lambda r: (r["data"], r["shots"], r["method"]))
        if r.get("selection")
    ]
    if chosen:
        lines += ["", "Mini-batch route: `--lqf-lr` chosen on validation accuracy (seed 0):", ""]
        lines += [f"- {c}" for c in chosen]
    lines += targets_table(rows) + time_table(rows)
    lines += ["", "Plot: `lqf_accuracy.png` (test accuracy against shots per class, mean ± std over seeds)."]
    plot(rows)
    with open(os.path.join(RESULTS, "lqf_accuracy.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _machine(h: dict) -> str:
    """One line naming the machine of a ``hardware()`` record."""
    return f"{h['cpu']}, {h['cores']} cores, torch {h['torch']}"


def _grid_point(g: dict) -> str:
    if "from_shots" in g:
        return f"{g['flags'][-1]} (chosen at {g['from_shots']} shots)"
    val = "failed" if g["val_accuracy"] is None else f"val {100 * g['val_accuracy']:.1f}"
    return f"{g['flags'][-1]} ({val}{', chosen' if g['chosen'] else ''})"


def plot(rows: list[dict]) -> None:
    """``lqf_accuracy.png``: fine-tuning, probe and LQF against shots per class, per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DATA), figsize=(5 * len(DATA), 3.6), squeeze=False)
    for ax, data in zip(axes[0], DATA, strict=True):
        for method, style in (("finetune", "o-"), ("linear-probe", "s--"), ("lqf", "^-")):
            pts = sorted(
                (r["shots"], r["test_accuracy"]) for r in rows if r["data"] == data and r["method"] == method
            )
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.errorbar(
                x,
                [100 * p[1]["mean"] for p in pts],
                yerr=[100 * p[1]["std"] for p in pts],
                fmt=style,
                capsize=3,
                label=method,
            )
        ax.set_xscale("log")
        ax.set_xticks(SHOTS, [str(v) for v in SHOTS])
        ax.set_xlabel("training images per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"efficientnet_lite0 on {data}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "lqf_accuracy.png"), dpi=120)
    plt.close(fig)


def targets_table(rows: list[dict]) -> list[str]:
    """The accuracy targets: LQF >= fine-tuning at <= 25 shots, within 1 point at >= 200."""
    by = {(r["data"], r["shots"], r["method"]): r for r in rows}
    out = [
        "",
        "Accuracy targets (mean test accuracy, LQF with its defaults against fine-tuning):",
        "",
        "| data | shots/class | finetune | lqf | lqf - finetune | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for (data, shots, method), r in sorted(by.items()):
        ft = by.get((data, shots, "finetune"))
        if method != "lqf" or ft is None:
            continue
        a, b = 100 * ft["test_accuracy"]["mean"], 100 * r["test_accuracy"]["mean"]
        need = 0.0 if shots <= 25 else -1.0
        target = ">= 0" if shots <= 25 else ">= -1"
        met = "yes" if b - a >= need else "no"
        out.append(f"| {data} | {shots} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {target} | {met} |")
    return out


def time_table(rows: list[dict]) -> list[str]:
    """Time to a validated model: LQF (no learning rate to search) against fine-tuning's sweep.

    Fine-tuning's time is the sum of the train seconds of its validation grid (seed 0, six
    runs); LQF's is the train seconds of its seed-0 run, which includes choosing its penalty on
    validation. Only rows whose runs were measured under the same conditions are compared
    (``baseline_fewshot.json`` and the ``fewshot`` stage: one core each).
    """
    by = {(r["data"], r["shots"], r["method"]): r for r in rows}
    out = []
    for (data, shots, method), r in sorted(by.items()):
        ft = by.get((data, shots, "finetune"))
        if method != "lqf" or ft is None or ft.get("source") != "baseline_fewshot.json":
            continue
        grid = ft.get("selection_grid") or []
        if not grid or any("train_seconds" not in g for g in grid) or 0 not in r["seeds"]:
            continue
        sweep = sum(g["train_seconds"] for g in grid)
        lqf = r["train_seconds"]["values"][r["seeds"].index(0)]
        solver = (r.get("solver") or ["?"])[r["seeds"].index(0)]
        if not out:
            out = [
                "",
                "Time to a validated model (seed 0; fine-tuning: its whole validation grid of "
                f"{len(grid)} runs; LQF: one run, its penalty chosen on validation inside it):",
                "",
                "| data | shots/class | finetune sweep s | lqf s | lqf solver | ratio |",
                "|---|---|---|---|---|---|",
            ]
        out.append(f"| {data} | {shots} | {sweep:.0f} | {lqf:.0f} | {solver} | {lqf / sweep:.2f} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
