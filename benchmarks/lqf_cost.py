"""LQF cost benchmark: step time and peak memory against fine-tuning, solver speed,
and predicting with f_lin against the network at w0 + dw.

Parts (each in its own process so that peak memory belongs to it alone):

* ``step``: one training step on a batch of 64 images (64 px) of
  ``efficientnet_lite0``, for the same trained parameter set: fine-tuning
  (forward + backward) against LQF (primal and tangent forward by jvp +
  backward through the tangent), LQF also on cached inputs of the linearized
  part. Parameter sets: the last 3 units + head (LQF's default) and the whole
  network. Median of 10 timed steps after 2 warm-up steps.
* ``solvers``: the LQF problem of fashion-mnist, 10 shots, seed 0, default
  linearized set, ridge 1e-2 (relative): time for CG (no preconditioner and
  K-FAC) and for K-FAC-preconditioned Adam (learning rates 1e-3, 1e-2, 1e-1;
  mini-batches of 32) to reach a relative sub-optimality
  ``(L - L*) / |L*| <= 1e-3``, with ``L*`` from the exact kernel solver.
* ``predict``: test accuracy and time of the run
  ``benchmarks/runs/lqf/fashion-mnist-10/lqf-seed0`` predicting with ``f_lin``
  and with the network at ``w0 + dw``.

Usage::

    python benchmarks/lqf_cost.py [--parts step solvers predict]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)


def _peak_mb() -> float:
    from lqf.runs.fit import peak_memory_mb

    return peak_memory_mb("cpu")


def step_one(kind: str, subset: str) -> dict:
    import torch

    from lqf.linearization.chain import split_at
    from lqf.linearization.lqf_model import LQFModel
    from lqf.methods.finetune import select_trainable
    from lqf.methods.lqf import select_linearized
    from lqf.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 10, pretrained=True).eval()
    x = torch.rand(64, 3, 64, 64)
    y = torch.randint(0, 10, (64,))
    unfreeze = "all" if subset == "all" else "last-3"
    if kind == "finetune":
        select_trainable(model, unfreeze)
        params = [p for p in model.parameters() if p.requires_grad]

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, params)
            del grads

    else:
        names = select_linearized(model, unfreeze)
        split = split_at(model, "features.blocks.6.0", x[:2]) if subset != "all" else None
        prefix, suffix = split if split is not None else (None, None)
        lqf = LQFModel(model, names, prefix, suffix)
        cached = lqf.features_in(x) if kind == "lqf-cached" else None
        target = torch.nn.functional.one_hot(y, 10).float()

        def step() -> None:
            out = lqf.linear(cached) if cached is not None else lqf(x)
            loss = 0.5 * (out - target).pow(2).sum(1).mean()
            grads = torch.autograd.grad(loss, list(lqf.linear.delta))
            del grads

    for _ in range(2):
        step()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "kind": kind,
        "subset": subset,
        "median_s": statistics.median(times),
        "times": times,
        "peak_mb": _peak_mb(),
    }


def solvers_one() -> dict:
    import torch

    from lqf.curvature import KFAC
    from lqf.data import load_data
    from lqf.linearization.chain import split_at
    from lqf.linearization.lqf_model import LQFModel
    from lqf.methods.lqf import fit_probe_head, select_linearized
    from lqf.models import build_model
    from lqf.solvers import KernelSolver, QuadraticProblem, conjugate_gradient
    from lqf.solvers.minibatch import PreconditionedOptimizer
    from lqf.solvers.problem import hutchinson_trace
    from lqf.training.evaluate import apply

    torch.manual_seed(0)
    data = load_data("fashion-mnist", image_size=64, shots=10, val_per_class=20, seed=0, max_test=100)
    model = build_model("efficientnet_lite0", 10, pretrained=True, generator=torch.Generator().manual_seed(0))
    model.eval()
    ftr = apply(model.embed, data.train)
    fva = apply(model.embed, data.val)
    fit_probe_head(model, ftr, data.train.labels, fva, data.val.labels)
    names = select_linearized(model, "last-3")
    probe = next(iter(data.train.batches(2)))[0]
    prefix, suffix = split_at(model, "features.blocks.6.0", probe)
    lqf = LQFModel(model, names, prefix, suffix)
    xtr = apply(lqf.features_in, data.train)
    targets = torch.nn.functional.one_hot(data.train.labels, 10).float()
    problem = QuadraticProblem(lqf.linear, xtr, targets, 0.0, batch_size=128)
    scale = hutchinson_trace(problem) / problem.residual.numel() / problem.n
    problem.lam = 1e-2 * scale
    t0 = time.perf_counter()
    exact = KernelSolver(problem).solve(problem.lam)
    kernel_s = time.perf_counter() - t0
    best = problem.loss(exact)
    out: dict = {"L_star": best, "kernel_seconds": kernel_s, "n": problem.n, "P": problem.dim, "runs": []}

    def gap(v: torch.Tensor) -> float:
        return (problem.loss(v) - best) / abs(best)

    for pre_name in ("none", "kfac"):
        start = time.perf_counter()
        pre = None
        if pre_name == "kfac":
            kfac = KFAC(problem.model, xtr, batch_size=64)
            damping = 0.1 * kfac.mean_eigenvalue()
            pre = lambda v, k=kfac, d=damping: k.inverse(v, d, problem.lam)  # noqa: E731
        curve = []
        spent = [0.0]  # time inside the callback (loss evaluations), not the solver's

        def cb(it, x, res, curve=curve, start=start, spent=spent):
            t = time.perf_counter()
            curve.append((it, t - start - spent[0], gap(x)))
            spent[0] += time.perf_counter() - t

        conjugate_gradient(problem.hvp, problem.rhs(), precondition=pre, tol=1e-7, max_iter=300, callback=cb)
        out["runs"].append({"solver": f"cg, {pre_name}", "curve": curve})
    kfac = KFAC(problem.model, xtr, batch_size=64)
    damping = 0.1 * kfac.mean_eigenvalue()
    lin = problem.model
    for lr in (1e-3, 1e-2, 1e-1):
        with torch.no_grad():
            for d in lin.delta:
                d.zero_()
        opt = PreconditionedOptimizer(
            lin.delta.parameters(), lr, problem.lam, lambda g: kfac.inverse(g, damping, problem.lam), "adam"
        )
        g = torch.Generator().manual_seed(0)
        curve = []
        elapsed = 0.0
        for epoch in range(1, 61):
            start = time.perf_counter()
            for idx in torch.randperm(problem.n, generator=g).split(32):
                out_b = sum(lin.primal_tangent(xtr[idx], list(lin.delta)))
                loss = (
                    0.5 * (out_b - problem.residual[idx] - lin.primal(xtr[idx]).detach()).pow(2).sum(1).mean()
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            elapsed += time.perf_counter() - start
            curve.append((epoch, elapsed, gap(problem.flatten([d.detach() for d in lin.delta]))))
        out["runs"].append({"solver": f"adam+kfac, lr {lr:g}", "curve": curve})
    return out


def _time_to(curve: list, level: float) -> float | None:
    for _, seconds, g in curve:
        if g <= level:
            return seconds
    return None


def predict_one() -> dict:
    import torch

    from lqf.data import load_data
    from lqf.runs.fit import load_run
    from lqf.training.evaluate import evaluate

    path = os.path.join(HERE, "runs", "lqf", "fashion-mnist-10", "lqf-seed0")
    config, _, model, _ = load_run(path)
    data = load_data(
        config.data,
        image_size=config.image_size,
        shots=config.shots,
        val_per_class=config.val_per_class,
        seed=config.seed,
        max_test=config.max_test,
    )
    out = {}
    for mode in ("linear", "nonlinear"):
        model.predict = mode
        start = time.perf_counter()
        with torch.no_grad():
            res = evaluate(model, data.test, batch_size=256)
        out[mode] = {"test_accuracy": res["accuracy"], "seconds": time.perf_counter() - start}
    return out


def sub(part: str, *args: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", part, *args]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["step", "solvers", "predict"])
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        part, *rest = args.one
        result = {"step": lambda: step_one(*rest), "solvers": solvers_one, "predict": predict_one}[part]()
        print(json.dumps(result))
        return 0
    from common import hardware

    path = os.path.join(RESULTS, "lqf_cost.json")
    payload = json.load(open(path)) if os.path.isfile(path) else {}
    payload["command"] = "python benchmarks/lqf_cost.py"
    payload["hardware"] = hardware()
    if "step" in args.parts:
        payload["step"] = [
            sub("step", k, s)
            for s in ("last-3", "all")
            for k in ("finetune", "lqf", "lqf-cached")
            if not (s == "all" and k == "lqf-cached")
        ]
    if "solvers" in args.parts:
        payload["solvers"] = sub("solvers")
    if "predict" in args.parts:
        payload["predict"] = sub("predict")
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=1)
    write_md(payload)
    return 0


def write_md(p: dict) -> None:
    lines = [
        "# LQF cost benchmark",
        "",
        f"Command: `{p['command']}`. Hardware: {p['hardware']['cpu']}, "
        f"{p['hardware']['cores']} cores, torch {p['hardware']['torch']}.",
        "",
    ]
    if "step" in p:
        lines += [
            "## Training step, batch 64, 64 px, efficientnet_lite0",
            "",
            "| trained parameters | method | median step s | vs fine-tuning | peak MiB | vs fine-tuning |",
            "|---|---|---|---|---|---|",
        ]
        for r in p["step"]:
            ft = next(q for q in p["step"] if q["subset"] == r["subset"] and q["kind"] == "finetune")
            lines.append(
                f"| {r['subset']} | {r['kind']} | {r['median_s']:.3f} "
                f"| {r['median_s'] / ft['median_s']:.2f}x "
                f"| {r['peak_mb']:.0f} | {r['peak_mb'] / ft['peak_mb']:.2f}x |"
            )
        lines.append("")
    if "solvers" in p:
        s = p["solvers"]
        lines += [
            "## Solvers: time to relative sub-optimality 1e-3",
            "",
            f"fashion-mnist, 10 shots, seed 0, N = {s['n']}, P = {s['P']:,} linearized weights, "
            f"ridge 1e-2 (relative). Exact kernel solve: {s['kernel_seconds']:.1f} s.",
            "",
            "| solver | seconds to 1e-3 | final relative sub-optimality |",
            "|---|---|---|",
        ]
        for r in s["runs"]:
            t = _time_to(r["curve"], 1e-3)
            lines.append(
                f"| {r['solver']} | {'not reached' if t is None else f'{t:.1f}'} | {r['curve'][-1][2]:.1e} |"
            )
        lines.append("")
    if "predict" in p:
        q = p["predict"]
        lines += [
            "## Predicting with f_lin or with the network at w0 + dw",
            "",
            "| prediction | test accuracy | seconds (full test set) |",
            "|---|---|---|",
        ]
        for mode, r in q.items():
            lines.append(f"| {mode} | {100 * r['test_accuracy']:.2f} | {r['seconds']:.1f} |")
    with open(os.path.join(RESULTS, "lqf_cost.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
