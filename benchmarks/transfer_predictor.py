"""Transfer predictor benchmark: do training-split scores predict the gain of fine-tuning?

For every model (efficientnet_lite0/1/2, ImageNet weights), target data set (fashion-mnist,
animal-mnist, mnist5k, digits), few-shot size and seed:

1. ``runs``: the ridge linear probe, fine-tuning and LQF (head + last block, ``--linearize
   last-2``) are trained, each as one ``python -m lqf fit`` process whose run directory is kept
   under ``benchmarks/runs/transfer/`` (finished runs are reused: the benchmark resumes).
   Fine-tuning uses the recipe that ``benchmarks/baseline.py`` chose on validation at 10 shots
   (``--lr 3e-4 --bn frozen --head-lr-scale 10``, 30 epochs, batch 32); the probe and LQF
   choose their ridge strength on the validation split. Test sets are capped at 2,000 images
   (``--max-test 2000``, a fixed stratified subset).
2. ``scores``: the training split alone (the same draw as the runs) gives the scores of
   :mod:`lqf.theory.transfer`: the cross-fitted tangent gain, LogME and LEEP (cached as JSON
   next to the runs).
3. ``report``: measured gains (test accuracy of fine-tuning / LQF minus that of the probe)
   against the scores: Spearman and Kendall rank correlations with permutation p-values and
   bootstrap intervals, over all points and over seed means; Markdown, JSON and a scatter plot
   in ``benchmarks/results/transfer_predictor.*``.

Usage::

    python benchmarks/transfer_predictor.py                     # all stages
    python benchmarks/transfer_predictor.py --stages report     # report from cached runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(HERE, "runs", "transfer")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's lqf, before any installed copy
from baseline import hardware  # noqa: E402

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
DATA = ("fashion-mnist", "animal-mnist", "mnist5k", "digits")
SEEDS = (0, 1)
SHOTS = (10,)
IMAGE_SIZE = 64
VAL_PER_CLASS = 20
MAX_TEST = 2000
#: the recipe chosen on validation at 10 shots in benchmarks/results/baseline.md (lite0, 64 px)
FINETUNE = ["--method", "finetune", "--lr", "3e-4", "--bn", "frozen", "--head-lr-scale", "10"]
METHODS = {
    "linear-probe": ["--method", "linear-probe", "--probe", "ridge"],
    "finetune": [*FINETUNE, "--epochs", "30", "--batch-size", "32"],
    "lqf": ["--method", "lqf", "--linearize", "last-2", "--kernel-memory-mb", "2048"],
}
EXECUTED: list[str] = []


def fit_flags(model: str, data: str, shots: int, seed: int) -> list[str]:
    """The shared ``lqf fit`` flags of one (model, data, shots, seed) point."""
    return [
        "--model", model, "--data", data, "--shots", str(shots), "--seed", str(seed),
        "--image-size", str(IMAGE_SIZE), "--val-per-class", str(VAL_PER_CLASS),
        "--max-test", str(MAX_TEST), "--threads", "1",
    ]  # fmt: skip


def run(tag: str, flags: list[str]) -> dict:
    """One ``lqf fit`` in a subprocess; a finished run directory is reused."""
    out = os.path.join(RUNS, tag)
    metrics = os.path.join(out, "metrics.json")
    if not os.path.isfile(metrics):
        if os.path.isdir(out):
            import shutil

            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "lqf", "fit", "--quiet", "--out", out, *flags]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=os.path.dirname(HERE), stdout=subprocess.DEVNULL)
        EXECUTED.append(out)
    with open(metrics) as handle:
        return json.load(handle)


def run_tag(model: str, data: str, shots: int, method: str, seed: int) -> str:
    return f"{model}/{data}-{shots}/{method}-seed{seed}"


def scores(model: str, data: str, shots: int, seed: int) -> dict:
    """The training-split scores of one point (cached in the run folder)."""
    path = os.path.join(RUNS, model, f"{data}-{shots}", f"scores-seed{seed}.json")
    if os.path.isfile(path):
        with open(path) as handle:
            return json.load(handle)
    import torch

    from lqf.data import load_data
    from lqf.models import build_model
    from lqf.theory.transfer import transfer_scores

    if os.environ.get("LQF_THREADS"):
        torch.set_num_threads(int(os.environ["LQF_THREADS"]))
    start = time.perf_counter()
    split = load_data(
        data, image_size=IMAGE_SIZE, shots=shots, val_per_class=VAL_PER_CLASS, seed=seed, max_test=1
    )
    net = build_model(model, len(split.classes))
    images = torch.cat([x for x, _ in split.train.batches(256)])
    out = transfer_scores(net, images, split.train.labels, len(split.classes), model_name=model, seed=seed)
    out["n_train"] = len(split.train.labels)
    out["seconds"] = time.perf_counter() - start
    try:
        import resource

        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(out, handle, indent=1)
    print(f"scores {model} {data} {shots} seed {seed}: {out['seconds']:.0f} s", flush=True)
    return out


#: scores reported against the gains: key in the scores dict -> label
SCORES = {
    "gain_mse": "tangent gain (squared error, ours)",
    "gain_accuracy": "tangent gain (accuracy, ours)",
    "gain_gd_mse": "tangent gain, GD limit (squared error, ours)",
    "gain_gd_accuracy": "tangent gain, GD limit (accuracy, ours)",
    "logme": "LogME",
    "leep": "LEEP",
    "probe_accuracy": "cross-fitted probe accuracy",
}
TARGETS = {
    "gain_finetune": "fine-tuning - probe",
    "gain_lqf": "LQF - probe",
    "acc_finetune": "fine-tuning accuracy",
}
PERMUTATIONS = 10000
BOOTSTRAP = 2000


def rank_stats(x: list[float], y: list[float], seed: int = 0) -> dict:
    """Spearman and Kendall rank correlations of paired values, with two-sided permutation
    p-values (``PERMUTATIONS`` shuffles of ``y``) and a percentile bootstrap 95% interval."""
    import numpy as np
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    rho = float(stats.spearmanr(x, y).statistic)
    tau = float(stats.kendalltau(x, y).statistic)
    rng = np.random.default_rng(seed)
    rx = stats.rankdata(x)
    perm_rho = np.empty(PERMUTATIONS)
    perm_tau = np.empty(PERMUTATIONS)
    for k in range(PERMUTATIONS):
        yp = rng.permutation(y)
        perm_rho[k] = np.corrcoef(rx, stats.rankdata(yp))[0, 1]
        perm_tau[k] = stats.kendalltau(x, yp).statistic if k < 2000 else np.nan
    perm_tau = perm_tau[~np.isnan(perm_tau)]
    boot = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, n, n)
        if len(set(x[idx])) > 1 and len(set(y[idx])) > 1:
            boot.append(stats.spearmanr(x[idx], y[idx]).statistic)
    return {
        "n": n,
        "spearman": rho,
        "spearman_p": float((1 + np.sum(np.abs(perm_rho) >= abs(rho) - 1e-12)) / (1 + len(perm_rho))),
        "spearman_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "kendall": tau,
        "kendall_p": float((1 + np.sum(np.abs(perm_tau) >= abs(tau) - 1e-12)) / (1 + len(perm_tau))),
    }


def collect(args: argparse.Namespace) -> list[dict]:
    """One row per finished (model, data, shots, seed) point: accuracies, gains and scores."""
    rows = []
    for shots in args.shots:
        for model in args.models:
            for data in args.data:
                for seed in args.seeds:
                    row = {"model": model, "data": data, "shots": shots, "seed": seed}
                    for method in METHODS:
                        path = os.path.join(RUNS, run_tag(model, data, shots, method, seed), "metrics.json")
                        if os.path.isfile(path):
                            with open(path) as handle:
                                m = json.load(handle)
                            row[f"acc_{method.replace('linear-probe', 'probe')}"] = m["test_accuracy"]
                            row[f"val_{method.replace('linear-probe', 'probe')}"] = m["val_accuracy"]
                            row[f"seconds_{method.replace('linear-probe', 'probe')}"] = m["train_seconds"]
                            row[f"peak_mb_{method.replace('linear-probe', 'probe')}"] = m["peak_memory_mb"]
                            row["n_test"] = m["n_test"]
                    path = os.path.join(RUNS, model, f"{data}-{shots}", f"scores-seed{seed}.json")
                    if os.path.isfile(path):
                        with open(path) as handle:
                            row["scores"] = json.load(handle)
                    if "acc_probe" in row:
                        for method in ("finetune", "lqf"):
                            if f"acc_{method}" in row:
                                row[f"gain_{method}"] = row[f"acc_{method}"] - row["acc_probe"]
                    rows.append(row)
    return rows


def seed_means(rows: list[dict]) -> list[dict]:
    """Rows averaged over seeds per (model, data, shots); only keys every seed has."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["data"], r["shots"]), []).append(r)
    out = []
    for (model, data, shots), rs in groups.items():
        row = {"model": model, "data": data, "shots": shots, "seeds": [r["seed"] for r in rs]}
        for key in (*TARGETS, "acc_probe", "acc_lqf"):
            vals = [r.get(key) for r in rs]
            if all(v is not None for v in vals):
                row[key] = sum(vals) / len(vals)
        if all("scores" in r for r in rs):
            row["scores"] = {
                k: sum(r["scores"][k] for r in rs) / len(rs)
                for k in SCORES
                if all(r["scores"].get(k) is not None for r in rs)
            }
        out.append(row)
    return out


def correlations(rows: list[dict]) -> list[dict]:
    out = []
    for target in TARGETS:
        for score in SCORES:
            pts = [
                (r["scores"][score], r[target]) for r in rows if target in r and score in r.get("scores", {})
            ]
            pts = [(a, b) for a, b in pts if a is not None and not math.isnan(a)]
            if len(pts) >= 4 and len({a for a, _ in pts}) == 1:
                out.append({"target": target, "score": score, "n": len(pts), "constant": pts[0][0]})
            elif len(pts) >= 4:
                stats = rank_stats([a for a, _ in pts], [b for _, b in pts])
                distinct = len({a for a, _ in pts})
                out.append({"target": target, "score": score, **stats, "distinct_scores": distinct})
    return out


def within_data(rows: list[dict]) -> list[dict]:
    """Spearman rho inside each data set (its models x seeds): does a score rank the models?"""
    from scipy import stats

    out = []
    for data in sorted({r["data"] for r in rows}):
        part = [r for r in rows if r["data"] == data and "scores" in r]
        for target in ("acc_finetune", "gain_finetune"):
            for score in ("logme", "leep", "gain_gd_mse", "probe_accuracy"):
                pts = [(r["scores"][score], r[target]) for r in part if target in r]
                if len(pts) >= 4 and len({a for a, _ in pts}) > 1:
                    rho = stats.spearmanr([a for a, _ in pts], [b for _, b in pts]).statistic
                    out.append(
                        {"data": data, "target": target, "score": score, "n": len(pts), "spearman": rho}
                    )
    return out


def plot(rows: list[dict], path: str) -> None:
    """Measured gains against the scores, one marker per point (the tuned tangent gain is not
    plotted when it is constant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("gain_gd_mse", "gain_finetune", "tangent gain, GD limit (ours)"),
        ("gain_gd_mse", "gain_lqf", "tangent gain, GD limit (ours)"),
        ("logme", "gain_finetune", "LogME"),
        ("leep", "gain_finetune", "LEEP"),
    ]
    tuned = {r["scores"]["gain_mse"] for r in rows if "scores" in r}
    if len(tuned) > 1:
        panels.insert(0, ("gain_mse", "gain_finetune", "tangent gain (ours)"))
    markers = {"fashion-mnist": "o", "animal-mnist": "s", "mnist5k": "^", "digits": "D"}
    colours = {"efficientnet_lite0": "C0", "efficientnet_lite1": "C1", "efficientnet_lite2": "C2"}
    cols = 2 if len(panels) == 4 else 3
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (key, target, label) in zip(axes.flat, panels, strict=False):
        for r in rows:
            if target in r and r.get("scores", {}).get(key) is not None:
                ax.scatter(
                    r["scores"][key],
                    100 * r[target],
                    marker=markers.get(r["data"], "o"),
                    color=colours.get(r["model"], "k"),
                    s=28,
                )
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel(f"{label}, training split")
        ax.set_ylabel(("fine-tuning" if target == "gain_finetune" else "LQF") + " - probe (test points)")
    handles = [plt.Line2D([], [], marker=m, ls="", color="k", label=d) for d, m in markers.items()]
    handles += [
        plt.Line2D([], [], marker="o", ls="", color=c, label=m.replace("efficientnet_", ""))
        for m, c in colours.items()
    ]
    axes.flat[0].legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, seconds: float) -> None:
    rows = collect(args)
    means = seed_means(rows)
    previous = os.path.join(RESULTS, "transfer_predictor.json")
    if args.remark is None and os.path.isfile(previous):
        with open(previous) as handle:
            args.remark = json.load(handle).get("remark")
    payload = {
        "remark": args.remark,
        "command": "python benchmarks/transfer_predictor.py",
        "hardware": hardware(),
        "settings": {
            "image_size": IMAGE_SIZE,
            "val_per_class": VAL_PER_CLASS,
            "max_test": MAX_TEST,
            "methods": METHODS,
            "permutations": PERMUTATIONS,
            "bootstrap": BOOTSTRAP,
        },
        "wall_seconds": seconds,
        "points": rows,
        "seed_means": means,
        "correlations_points": correlations(rows),
        "correlations_seed_means": correlations(means),
        "correlations_within_data": within_data(rows),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "transfer_predictor.json"), "w") as handle:
        json.dump(payload, handle, indent=1)
    plot(rows, os.path.join(RESULTS, "transfer_predictor.png"))
    write_markdown(payload)


def write_markdown(payload: dict) -> None:
    hw = payload["hardware"]
    lines = [
        "# Transfer predictor: training-split scores vs the measured gain of fine-tuning",
        "",
        f"Command: `{payload['command']}`. Hardware: {hw['cpu']}, {hw['cores']} cores (every process "
        f"pinned to one core, one thread), torch {hw['torch']} on the CPU. "
        + (payload["remark"] or f"Wall time of the last invocation {payload['wall_seconds'] / 60:.0f} min."),
        "",
        f"{IMAGE_SIZE} px, {VAL_PER_CLASS} validation images per class, test sets capped at {MAX_TEST} "
        "images (fixed stratified subset). Accuracies in %; gains in accuracy points (test accuracy of "
        "the method minus that of the ridge linear probe on the same seed). Scores use the training split "
        "only.",
        "",
        "## Rank correlations",
        "",
        "Spearman `rho` and Kendall `tau`; `p`: two-sided permutation p-value "
        f"({PERMUTATIONS} shuffles for rho, 2,000 for tau); 95% interval: percentile bootstrap over points "
        f"({BOOTSTRAP} resamples). `n`: number of points.",
        "",
    ]
    tables = (
        ("Seed means (one point per model and data set)", "correlations_seed_means"),
        ("All points (model x data set x seed)", "correlations_points"),
    )
    for title, key in tables:
        lines += [
            f"### {title}",
            "",
            "| target | score | n | Spearman rho | p | 95% interval | Kendall tau | p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in payload[key]:
            if "constant" in c:
                lines.append(
                    f"| {TARGETS[c['target']]} | {SCORES[c['score']]} | {c['n']} "
                    f"| undefined: the score is {c['constant']:g} at every point | | | | |"
                )
                continue
            lo, hi = c["spearman_ci95"]
            n = f"{c['n']}" + (f" ({c['distinct_scores']} distinct)" if c["distinct_scores"] < c["n"] else "")
            lines.append(
                f"| {TARGETS[c['target']]} | {SCORES[c['score']]} | {n} | {c['spearman']:+.2f} "
                f"| {c['spearman_p']:.3f} | [{lo:+.2f}, {hi:+.2f}] | {c['kendall']:+.2f} "
                f"| {c['kendall_p']:.3f} |"
            )
        lines.append("")
    lines += [
        "### Inside each data set (its models x seeds)",
        "",
        "Spearman rho only (6 points each: no p-values worth quoting).",
        "",
        "| data | target | LogME | LEEP | tangent gain, GD limit | cross-fitted probe accuracy |",
        "|---|---|---|---|---|---|",
    ]
    within = payload["correlations_within_data"]
    for data in sorted({w["data"] for w in within}):
        for target in ("acc_finetune", "gain_finetune"):
            cells = []
            for score in ("logme", "leep", "gain_gd_mse", "probe_accuracy"):
                hit = [w for w in within if (w["data"], w["target"], w["score"]) == (data, target, score)]
                cells.append(f"{hit[0]['spearman']:+.2f} (n={hit[0]['n']})" if hit else "-")
            lines.append(f"| {data} | {TARGETS[target]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Points",
        "",
        "| model | data | shots | seed | probe | fine-tune | LQF | gain FT | gain LQF | tangent gain (MSE) "
        "| tangent gain (acc) | CV probe acc | LogME | LEEP | score s | score MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, scale=100.0, fmt="{:.2f}"):
        return fmt.format(scale * v) if isinstance(v, (int, float)) else "-"

    for r in payload["points"]:
        s = r.get("scores", {})
        lines.append(
            f"| {r['model'].replace('efficientnet_', '')} | {r['data']} | {r['shots']} | {r['seed']} "
            f"| {f(r.get('acc_probe'))} | {f(r.get('acc_finetune'))} | {f(r.get('acc_lqf'))} "
            f"| {f(r.get('gain_finetune'), fmt='{:+.2f}')} | {f(r.get('gain_lqf'), fmt='{:+.2f}')} "
            f"| {f(s.get('gain_mse'), 1.0, '{:+.1e}')} | {f(s.get('gain_accuracy'), fmt='{:+.1f}')} "
            f"| {f(s.get('probe_accuracy'), fmt='{:.1f}')} | {f(s.get('logme'), 1.0, '{:.3f}')} "
            f"| {f(s.get('leep'), 1.0, '{:.3f}')} | {f(s.get('seconds'), 1.0, '{:.0f}')} "
            f"| {f(s.get('peak_memory_mb'), 1.0, '{:.0f}')} |"
        )
    lines += [
        "",
        "## Cost",
        "",
        "Train seconds of each `lqf fit` run (training only, not the test evaluation) and the peak "
        "resident memory of its process; the scores' seconds include loading the data and the model. "
        "Every process ran pinned to one core with one thread, and up to three of them shared that "
        "core at times, so seconds are upper bounds.",
        "",
        "| what | runs | mean s | max s | max peak MiB |",
        "|---|---|---|---|---|",
    ]
    pts = payload["points"]
    for label, key in (("linear probe", "probe"), ("fine-tuning", "finetune"), ("LQF", "lqf")):
        secs = [r[f"seconds_{key}"] for r in pts if f"seconds_{key}" in r]
        mems = [r[f"peak_mb_{key}"] for r in pts if f"peak_mb_{key}" in r]
        if secs:
            lines.append(
                f"| {label} | {len(secs)} | {sum(secs) / len(secs):.0f} | {max(secs):.0f} | {max(mems):.0f} |"
            )
    secs = [r["scores"]["seconds"] for r in pts if "scores" in r]
    mems = [r["scores"].get("peak_memory_mb", 0.0) for r in pts if "scores" in r]
    if secs:
        lines.append(
            f"| scores (all three) | {len(secs)} | {sum(secs) / len(secs):.0f} | {max(secs):.0f} "
            f"| {max(mems):.0f} (one process for all points) |"
        )
    lines += ["", "![scatter](transfer_predictor.png)", ""]
    with open(os.path.join(RESULTS, "transfer_predictor.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines[:60]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["runs", "scores", "report"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--data", nargs="+", default=list(DATA))
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--remark", help="a note for the report (e.g. wall times of earlier invocations)")
    args = parser.parse_args(argv)
    started = time.time()
    if "scores" in args.stages:
        for seed in args.seeds:
            for shots in args.shots:
                for model in args.models:
                    for data in args.data:
                        scores(model, data, shots, seed)
    if "runs" in args.stages:
        for method in args.methods:
            for seed in args.seeds:
                for shots in args.shots:
                    for model in args.models:
                        for data in args.data:
                            run(
                                run_tag(model, data, shots, method, seed),
                                [*fit_flags(model, data, shots, seed), *METHODS[method]],
                            )
    if "report" in args.stages:
        report(args, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
