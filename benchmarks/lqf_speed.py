"""LQF at the probe's speed: time to a validated model, the kernel without J, same answers.

Parts (``--parts``, each measured side by side in this one invocation on this machine):

* ``time``: ``lqf fit`` with defaults, ``--method linear-probe`` against ``--method lqf``, on
  fashion-mnist (``efficientnet_lite0``, ImageNet weights, 64 px, 20 validation images per
  class, 2,000 test images) at 10, 100 and 500 images per class, seeds 0, 1, 2. Each run is
  its own process (``benchmarks/common.py``), so its ``peak_memory_mb`` (peak resident memory)
  is its own. The time to a validated model is the run's ``train_seconds``: features (the
  probe) or the cached inputs of the linear part, the probe head, the factors, the solve and
  the ridge choice (LQF); test evaluation excluded.
* ``kernel``: the tangent kernel of 100 training images (10 per class, seed 0; 1,000 rows),
  ``J M^-1 J^T`` with ``J`` materialized (``KernelSolver``'s ``fill_jacobian``, the route before)
  against the factored Jacobian (``JacobianFactors`` + ``tangent_kernel``): time and peak
  memory, each in a fresh process, and the largest relative difference of the two kernels.
* ``answers``: at 10 images per class (seed 0), one ridge (the one LQF chose), test outputs
  of the materialized-J kernel solution (eigendecomposition, exact) against the new kernel
  route, the new multi-shift CG and the CG of before (``conjugate_gradient`` on jvp/vjp
  products, its defaults then: tol 1e-3, 100 iterations, and run to tol 1e-6).
* ``before``: ``lqf fit --method lqf`` with its defaults at 10 images per class (seeds 0, 1, 2,
  all 10,000 test images) by the code before the factored kernel (commit ``BEFORE``, checked
  out in a temporary git worktree; materialized ``J``, Hutchinson trace) and by today's code:
  time to a validated model, chosen ridge and test accuracy, side by side.
* ``passes``: products ``J^T J v`` (each one pass over the factors or the data) that
  multi-shift CG needs for the whole grid against each ridge solved alone, at 25 images per
  class; the kernel route makes one pass (the factors) for any number of ridges.

Usage::

    python benchmarks/lqf_speed.py [--parts time kernel answers passes before] [--seeds 0 1 2]
        [--shots 10 100 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(HERE, "runs", "speed")
sys.path.insert(0, HERE)
from common import ROOT, fit_run, hardware, summarise  # noqa: E402

#: the last commit before the factored tangent kernel
BEFORE = "fc3e27e9d8b8971a2fd9ac550775c1d5308ca0cd"
COMMON = [
    "--model",
    "efficientnet_lite0",
    "--data",
    "fashion-mnist",
    "--val-per-class",
    "20",
    "--max-test",
    "2000",
]


# ------------------------------------------------------------------------------------------ time
def part_time(seeds: list[int], shots: list[int]) -> dict:
    out: dict = {"seeds": seeds, "shots": shots}
    for k in shots:
        for method in ("linear-probe", "lqf"):
            rows = []
            for seed in seeds:
                run = os.path.join(RUNS, f"{method}-{k}-{seed}")
                m, _ = fit_run(run, [*COMMON, "--method", method, "--shots", str(k), "--seed", str(seed)])
                rows.append(m)
            out[f"{method}@{k}"] = {
                "train_seconds": summarise([m["train_seconds"] for m in rows]),
                "peak_memory_mb": summarise([m["peak_memory_mb"] for m in rows]),
                "test_accuracy": summarise([m["test_accuracy"] for m in rows]),
                "solver": [m.get("solver") for m in rows],
                "solver_reason": [m.get("solver_plan", {}).get("reason") for m in rows],
                "ridge_relative": [m.get("ridge_relative") for m in rows],
                "notes": [m.get("notes", []) for m in rows],
            }
        probe, lqf = out[f"linear-probe@{k}"], out[f"lqf@{k}"]
        ratios = [
            a / b
            for a, b in zip(lqf["train_seconds"]["values"], probe["train_seconds"]["values"], strict=True)
        ]
        out[f"ratio@{k}"] = summarise(ratios)
    return out


# ---------------------------------------------------------------------------------------- kernel
def _problem(shots: int, seed: int):
    """The default LQF problem: the probe head, the last 3 units + head linearized, cached inputs."""
    import torch
    from torch import nn

    from lqf.data import load_data
    from lqf.linearization.lqf_model import LQFModel
    from lqf.methods.lqf import _link_input, fit_probe_head, select_linearized
    from lqf.models import build_model
    from lqf.training.evaluate import apply

    torch.set_num_threads(2)
    data = load_data("fashion-mnist", image_size=64, shots=shots, val_per_class=20, seed=seed, max_test=2000)
    c = len(data.classes)
    model = build_model("efficientnet_lite0", c, generator=torch.Generator().manual_seed(seed)).eval()
    ftr = apply(model.embed, data.train, batch_size=256)
    fva = apply(model.embed, data.val, batch_size=256)
    fit_probe_head(model, ftr, data.train.labels, fva, data.val.labels)
    names = select_linearized(model, "last-3")
    prefix, suffix = _link_input(model, names, next(iter(data.train.batches(2)))[0])
    lqf_model = LQFModel(model, names, prefix, suffix)
    xtr = apply(lqf_model.features_in, data.train, batch_size=256)
    xte = apply(lqf_model.features_in, data.test, batch_size=256)
    xva = apply(lqf_model.features_in, data.val, batch_size=256)
    targets = nn.functional.one_hot(data.train.labels, c).float()
    return lqf_model.linear, xtr, xva, xte, targets, data


def one_kernel(which: str, path: str) -> None:
    """In this process: one kernel of 100 images, its time and this process's peak memory."""
    import torch

    from lqf.runs.fit import peak_memory_mb, reset_peak_memory

    lin, xtr, *_ = _problem(10, 0)
    reset_peak_memory()
    base = peak_memory_mb()
    start = time.perf_counter()
    if which == "materialized":
        from lqf.solvers import KernelSolver, QuadraticProblem

        problem = QuadraticProblem(lin, xtr, torch.zeros(len(xtr), 10), 0.0, batch_size=128)
        kernel = KernelSolver(problem, memory_mb=8192).kernel
    else:
        from lqf.linearization.factors import JacobianFactors
        from lqf.linearization.kernel import tangent_kernel

        kernel = tangent_kernel(JacobianFactors(lin, xtr))
    seconds = time.perf_counter() - start
    torch.save(kernel, path + ".pt")
    with open(path + ".json", "w") as handle:
        json.dump({"seconds": seconds, "peak_mb": peak_memory_mb(), "before_mb": base}, handle)


def part_kernel() -> dict:
    import torch

    os.makedirs(RUNS, exist_ok=True)
    out = {}
    for which in ("materialized", "factored"):
        path = os.path.join(RUNS, f"kernel-{which}")
        cmd = [sys.executable, __file__, "--one-kernel", which, path]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        with open(path + ".json") as handle:
            out[which] = json.load(handle)
        out[which]["memory_mb"] = out[which]["peak_mb"] - out[which]["before_mb"]
    a = torch.load(os.path.join(RUNS, "kernel-materialized.pt"))
    b = torch.load(os.path.join(RUNS, "kernel-factored.pt"))
    out["relative_difference"] = float((a - b).norm() / a.norm())
    out["max_entry_difference"] = float((a - b).abs().max() / a.abs().max())
    out["speedup"] = out["materialized"]["seconds"] / out["factored"]["seconds"]
    out["memory_ratio"] = out["materialized"]["memory_mb"] / max(out["factored"]["memory_mb"], 1e-9)
    return out


# --------------------------------------------------------------------------------------- answers
def part_answers() -> dict:
    import torch

    from lqf.linearization.factors import JacobianFactors
    from lqf.solvers import KernelSolver, QuadraticProblem, conjugate_gradient
    from lqf.solvers.grid import solve_grid

    lin, xtr, xva, xte, targets, data = _problem(10, 0)
    train = JacobianFactors(lin, xtr)
    test = JacobianFactors(lin, xte)
    n = len(xtr)
    scale = float(train.diagonal().sum()) / (n * 10) / n  # as lqf.solvers.grid: exact trace / (N C) / N
    rel = 1.0  # what LQF chose on validation for this run (benchmarks/runs/speed/lqf-10-0)
    lam = rel * scale
    problem = QuadraticProblem(lin, xtr, targets, lam, batch_size=128)
    ks = KernelSolver(problem, memory_mb=8192)
    exact = ks.solve(lam)
    outputs = {"materialized kernel (exact)": exact}
    for route in ("kernel", "cg"):
        res = solve_grid(lin, train, targets, None, None, [rel], route=route)
        outputs[f"new {route}"] = torch.cat([d.reshape(-1) for d in res.delta])
    b = problem.rhs()
    for tol, max_iter in ((1e-3, 100), (1e-6, 2000)):
        res = conjugate_gradient(problem.hvp, b, tol=tol, max_iter=max_iter)
        outputs[f"cg before (tol {tol:g}, {max_iter} its)"] = res.x
    f_exact = test.outputs + test.jvp(problem.unflatten(exact))
    out = {"ridge_relative": rel, "lam": lam, "n_test": len(xte)}
    for name, dw in outputs.items():
        f = test.outputs + test.jvp(problem.unflatten(dw))
        out[name] = {
            "max_output_difference": float((f - f_exact).abs().max() / f_exact.abs().max()),
            "test_accuracy": float((f.argmax(1) == data.test.labels).float().mean()),
        }
    return out


# ---------------------------------------------------------------------------------------- before
def part_before(seeds: list[int]) -> dict:
    import shutil
    import tempfile

    tree = tempfile.mkdtemp(prefix="lqf-before-")
    subprocess.run(["git", "worktree", "add", "--detach", tree, BEFORE], cwd=ROOT, check=True)
    out: dict = {"commit": BEFORE, "seeds": seeds}
    try:
        for label, code in (("before", tree), ("now", ROOT)):
            rows = []
            for seed in seeds:
                run = os.path.join(RUNS, f"{label}-lqf-10-{seed}")
                if not os.path.isfile(os.path.join(run, "metrics.json")):
                    shutil.rmtree(run, ignore_errors=True)
                    flags = [*COMMON[:-2], "--method", "lqf", "--shots", "10", "--seed", str(seed)]
                    cmd = [sys.executable, "-m", "lqf", "fit", "--quiet", "--out", run, *flags]
                    env = {**os.environ, "PYTHONPATH": code}
                    print("$", " ".join(cmd), f"(code: {label})", flush=True)
                    subprocess.run(cmd, cwd=code, env=env, check=True)
                with open(os.path.join(run, "metrics.json")) as handle:
                    rows.append(json.load(handle))
            out[label] = {
                "train_seconds": summarise([m["train_seconds"] for m in rows]),
                "test_accuracy": summarise([m["test_accuracy"] for m in rows]),
                "ridge_relative": [m["ridge_relative"] for m in rows],
                "peak_memory_mb": summarise([m["peak_memory_mb"] for m in rows]),
                "n_test": rows[0]["n_test"],
            }
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    return out


# ---------------------------------------------------------------------------------------- passes
def part_passes() -> dict:
    from lqf.linearization.factors import JacobianFactors
    from lqf.methods.lqf import RIDGE_GRID
    from lqf.solvers.grid import solve_grid

    lin, xtr, xva, xte, targets, data = _problem(25, 0)
    train = JacobianFactors(lin, xtr)
    grid = solve_grid(lin, train, targets, None, None, list(RIDGE_GRID), route="cg")
    out = {
        "grid": grid.info["matrix_products"],
        "per_ridge": {},
        "iterations": [r["iterations"] for r in grid.records],
    }
    for r in RIDGE_GRID:
        alone = solve_grid(lin, train, targets, None, None, [r], route="cg")
        out["per_ridge"][str(r)] = alone.info["matrix_products"]
    out["grid_over_slowest_alone"] = out["grid"] / max(out["per_ridge"].values())
    out["grid_over_sum_alone"] = out["grid"] / sum(out["per_ridge"].values())
    return out


# ---------------------------------------------------------------------------------------- report
def report(results: dict) -> str:
    lines = ["# LQF speed: time to a validated model, the kernel without J", ""]
    hw = results["hardware"]
    lines += [
        f"Command: `{results['command']}`. Hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} "
        f"on the CPU. Minutes per part: "
        + ", ".join(f"{k} {v / 60:.0f}" for k, v in results.get("part_seconds", {}).items())
        + ".",
        "",
    ]
    if "time" in results:
        t = results["time"]
        lines += [
            "## Time to a validated model (`lqf fit` defaults; fashion-mnist, efficientnet_lite0, 64 px)",
            "",
            "`train_seconds` of each run (features, solve, ridge choice; no test evaluation); "
            "mean ± std over "
            f"seeds {t['seeds']}; peak MiB is each run's own process.",
            "",
            "| shots/class | probe s | LQF s | LQF / probe | probe peak MiB | LQF peak MiB "
            "| probe test | LQF test | LQF route |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k in t["shots"]:
            p, q, r = t[f"linear-probe@{k}"], t[f"lqf@{k}"], t[f"ratio@{k}"]
            lines.append(
                f"| {k} | {p['train_seconds']['mean']:.1f} ± {p['train_seconds']['std']:.1f} "
                f"| {q['train_seconds']['mean']:.1f} ± {q['train_seconds']['std']:.1f} "
                f"| {r['mean']:.1f}x ({', '.join(f'{v:.1f}' for v in r['values'])}) "
                f"| {p['peak_memory_mb']['mean']:.0f} | {q['peak_memory_mb']['mean']:.0f} "
                f"| {100 * p['test_accuracy']['mean']:.2f} | {100 * q['test_accuracy']['mean']:.2f} "
                f"| {', '.join(sorted(set(map(str, q['solver']))))} |"
            )
        lines += [
            "",
            "Route reasons (seed 0): "
            + "; ".join(f"{k}: {t[f'lqf@{k}']['solver_reason'][0]}" for k in t["shots"]),
            "",
        ]
        notes = [n for k in t["shots"] for ns in t[f"lqf@{k}"]["notes"] for n in ns[1:]]
        if notes:
            lines += ["Notes from the runs: " + "; ".join(sorted(set(notes))), ""]
    if "kernel" in results:
        k = results["kernel"]
        lines += [
            "## The tangent kernel of 100 images (1,000 rows, 1,030,410 linearized weights)",
            "",
            "| route | seconds | memory MiB (peak above the process before) |",
            "|---|---|---|",
            f"| J materialized (before) | {k['materialized']['seconds']:.1f} "
            f"| {k['materialized']['memory_mb']:.0f} |",
            f"| factored J (now) | {k['factored']['seconds']:.2f} | {k['factored']['memory_mb']:.0f} |",
            "",
            f"{k['speedup']:.0f}x faster, {k['memory_ratio']:.0f}x less memory; "
            "the two kernels (float32 Jacobians, "
            f"float64 sums) differ by {k['relative_difference']:.1e} relative (Frobenius), "
            f"{k['max_entry_difference']:.1e} in the largest entry. In float64 the test "
            "`tests/test_tangent_kernel.py` holds them equal to 1e-9.",
            "",
        ]
    if "answers" in results:
        a = results["answers"]
        lines += [
            f"## Same answers (10 images per class, seed 0, ridge {a['ridge_relative']:g}, "
            f"{a['n_test']} test images)",
            "",
            "| solution | largest test-output difference from the exact one "
            "(relative to the largest output) | test accuracy |",
            "|---|---|---|",
        ]
        for name, v in a.items():
            if isinstance(v, dict):
                lines.append(
                    f"| {name} | {v['max_output_difference']:.1e} | {100 * v['test_accuracy']:.2f} |"
                )
        lines.append("")
    if "before" in results:
        b = results["before"]
        lines += [
            f"## Before and now: `lqf fit --method lqf --shots 10` ({b['before']['n_test']} test images)",
            "",
            f"Before: commit `{b['commit'][:7]}` (materialized J, Hutchinson trace estimate); "
            f"now: this code. Mean ± std over seeds {b['seeds']}.",
            "",
            "| code | seconds | test accuracy per seed | mean | ridge chosen | peak MiB |",
            "|---|---|---|---|---|---|",
        ]
        for label in ("before", "now"):
            v = b[label]
            accs = ", ".join(f"{100 * a:.2f}" for a in v["test_accuracy"]["values"])
            ridges = ", ".join(f"{r:g}" for r in v["ridge_relative"])
            lines.append(
                f"| {label} | {v['train_seconds']['mean']:.1f} ± {v['train_seconds']['std']:.1f} | {accs} "
                f"| {100 * v['test_accuracy']['mean']:.2f} | {ridges} | {v['peak_memory_mb']['mean']:.0f} |"
            )
        lines.append("")
    if "passes" in results:
        p = results["passes"]
        lines += [
            "## Products for the whole ridge grid (multi-shift CG, 25 images per class, seed 0, tol 1e-4)",
            "",
            f"The grid took {p['grid']} products J^T J v; each ridge alone: "
            + ", ".join(f"{r}: {v}" for r, v in p["per_ridge"].items())
            + f". Grid / slowest ridge alone: {p['grid_over_slowest_alone']:.2f}x; grid / all five alone: "
            f"{p['grid_over_sum_alone']:.2f}x. The kernel route makes one pass (the factors) "
            "for any number of ridges.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["time", "kernel", "answers", "passes", "before"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", nargs="+", type=int, default=[10, 100, 500])
    parser.add_argument("--report", action="store_true", help="rewrite lqf_speed.md from lqf_speed.json")
    parser.add_argument("--one-kernel", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_kernel:
        one_kernel(*args.one_kernel)
        return
    path = os.path.join(RESULTS, "lqf_speed.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    if args.report:
        with open(os.path.join(RESULTS, "lqf_speed.md"), "w") as handle:
            handle.write(report(results))
        return
    start = time.perf_counter()
    results["hardware"] = hardware()
    results["command"] = "python benchmarks/lqf_speed.py " + " ".join(sys.argv[1:])
    parts = {"time": lambda: part_time(args.seeds, args.shots), "kernel": part_kernel}
    parts |= {"answers": part_answers, "passes": part_passes, "before": lambda: part_before(args.seeds)}
    for part in args.parts:
        print(f"== {part}", flush=True)
        began = time.perf_counter()
        results[part] = parts[part]()
        results.setdefault("part_seconds", {})[part] = time.perf_counter() - began
        results["wall_seconds"] = time.perf_counter() - start
        with open(path, "w") as handle:
            json.dump(results, handle, indent=1)
        with open(os.path.join(RESULTS, "lqf_speed.md"), "w") as handle:
            handle.write(report(results))


if __name__ == "__main__":
    main()
