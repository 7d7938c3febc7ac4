# ruff: noqa: E501
"""One process against two under ``torchrun`` on this machine, and the bytes each step sends.

``lqf fit --method finetune`` (efficientnet_lite0, fashion-mnist, 25 images per class, 2 epochs,
batch 64, ``--bn frozen``), ``--method linear-probe`` and ``--method lqf --solver cg`` (each
process makes the tangent factors of its share of the images; every CG product all-reduces the
linearized parameters): one process with all the cores, then
``torchrun --standalone --nproc_per_node 2`` with one thread each (gloo); ``--method lqf --solver
kernel`` (each process sums its share of the kernel's blocks, one all-reduce of the kernel, the
ridges split between the processes) the same way. Then the one-process path now against the
commit before torchrun support (``BEFORE``, a temporary git worktree), alternating, to show it
did not get slower. On a 2-core machine
two processes share the cores one process already used, so this measures the overhead of the
split (communication, the redundant solve), not a speed-up. Bytes: a fine-tuning step all-reduces
the trained parameters' gradients (float32) and two floats; a ring all-reduce sends
``2 (W - 1) / W`` times the buffer per process.

Usage::

    python benchmarks/distributed.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import hardware  # noqa: E402

COMMON = [
    "--model",
    "efficientnet_lite0",
    "--data",
    "fashion-mnist",
    "--shots",
    "25",
    "--val-per-class",
    "20",
    "--max-test",
    "2000",
    "--quiet",
]
RUNS = {
    "finetune": ["--method", "finetune", "--epochs", "2", "--batch-size", "64", "--bn", "frozen"],
    "linear-probe": ["--method", "linear-probe"],
    "lqf-cg": ["--method", "lqf", "--solver", "cg"],
    "lqf-kernel": ["--method", "lqf", "--solver", "kernel"],
}
#: the last commit before torchrun support: the one-process path then, for the no-slowdown check
BEFORE = "964fce463023580bbef14f3cbaca56843d5d5b8f"
#: one-process runs timed at BEFORE and now, alternating, this many times each
REPEATS = 3


def fit(out: str, flags: list[str], processes: int, code: str = ROOT) -> dict:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = code
    args = ["-m", "lqf", "fit", *COMMON, "--out", out, *flags]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=code, env=env, check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "metrics.json")) as handle:
        m = json.load(handle)
    return {
        "wall_seconds": wall,
        "train_seconds": m["train_seconds"],
        "test_accuracy": m["test_accuracy"],
        "trained_parameters": m.get("trained_parameters"),
        "linearized_parameters": m.get("linearized_parameters"),
        "solver_info": m.get("solver_info"),
    }


def before(tmp: str) -> dict:
    """One process at ``BEFORE`` (a temporary git worktree) and now, alternating: train seconds."""
    import statistics

    tree = os.path.join(tmp, "before")
    subprocess.run(["git", "worktree", "add", "--detach", tree, BEFORE], cwd=ROOT, check=True)
    out: dict = {"commit": BEFORE, "repeats": REPEATS}
    try:
        for name in ("finetune", "lqf-kernel"):
            times: dict[str, list[float]] = {"before": [], "now": []}
            for i in range(REPEATS):
                for which, code in (("before", tree), ("now", ROOT)):
                    r = fit(os.path.join(tmp, f"{which}-{name}-{i}"), RUNS[name], 1, code)
                    times[which].append(r["train_seconds"])
            out[name] = {
                k: {"seconds": v, "mean": statistics.mean(v), "std": statistics.stdev(v)}
                for k, v in times.items()
            }
            print(name, out[name], flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    return out


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="lqf-dist-")
    results = {"hardware": hardware(), "command": "python benchmarks/distributed.py", "runs": {}}
    for name, flags in RUNS.items():
        for p in (1, 2):
            r = fit(os.path.join(tmp, f"{name}-{p}"), flags, p)
            results["runs"][f"{name}@{p}"] = r
            print(name, p, r, flush=True)
    results["before"] = before(tmp)
    params = results["runs"]["finetune@1"]["trained_parameters"]
    steps = -(-250 // 64) * 2
    results["bytes_per_step"] = 4 * (params + 2)
    results["ring_bytes_sent_per_process_per_step"] = {
        w: 2 * (w - 1) / w * 4 * (params + 2) for w in (2, 8, 32)
    }
    lqf = results["runs"]["lqf-cg@2"]
    info = lqf["solver_info"]
    results["lqf_cg"] = {
        "linearized_parameters": lqf["linearized_parameters"],
        "matrix_products": info["matrix_products"],
        "all_reduce_calls": info["all_reduce_calls"],
        "all_reduce_bytes": info["all_reduce_bytes"],
        "all_reduce_bytes_each": info["all_reduce_bytes_each"],
        "gather_bytes": info["gather_bytes"],
    }
    kern = results["runs"]["lqf-kernel@2"]["solver_info"]
    results["lqf_kernel"] = {
        "kernel_rows": kern["kernel_rows"],
        "all_reduce_calls": kern["all_reduce_calls"],
        "all_reduce_bytes": kern["all_reduce_bytes"],
        "factorizations_on_process_0": kern.get("factorizations_here"),
    }
    with open(os.path.join(HERE, "results", "distributed.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    hw = results["hardware"]
    lines = [
        "# One process against two (`torchrun`, gloo)",
        "",
        f"Command: `{results['command']}`. Hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} on the CPU. "
        "efficientnet_lite0, fashion-mnist, 25 images per class, 2,000 test images; fine-tuning 2 epochs, batch 64, "
        "`--bn frozen`. One process uses every core; two share them, one thread each, so this shows the cost of the "
        "split on one small machine, not a speed-up. Seed 0, one run each.",
        "",
        "| run | processes | train s | wall s (start-up included) | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for key, r in results["runs"].items():
        name, p = key.split("@")
        lines.append(
            f"| {name} | {p} | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} | {100 * r['test_accuracy']:.2f} |"
        )
    ring = results["ring_bytes_sent_per_process_per_step"]
    lines += [
        "",
        f"A fine-tuning step all-reduces {params:,} gradients plus 2 floats: {results['bytes_per_step'] / 2**20:.1f} MiB, of which "
        f"a ring all-reduce sends {ring[2] / 2**20:.1f} MiB per process with 2 processes, {ring[8] / 2**20:.1f} MiB with 8 and "
        f"{ring[32] / 2**20:.1f} MiB with 32; this run made {steps} steps. The probe and LQF gather their images' rows once "
        "(5 KB per image of features); the probe then solves on every process.",
        "",
        f"LQF with multi-shift CG on 2 processes: each made the tangent factors of its half of the images; the solve took "
        f"{results['lqf_cg']['matrix_products']} products with J^T J and made {results['lqf_cg']['all_reduce_calls']} all-reduces "
        f"(one per product, one for J^T r) of {results['lqf_cg']['all_reduce_bytes_each'] / 2**20:.2f} MiB each: the "
        f"{results['lqf_cg']['linearized_parameters']:,} linearized parameters in float32; rows gathered for the outputs and "
        f"accuracies: {results['lqf_cg']['gather_bytes'] / 2**10:.0f} KiB in all.",
        "",
        f"LQF's kernel route on 2 processes: each summed its share of the blocks of the {results['lqf_kernel']['kernel_rows']:,}-row "
        f"tangent kernel, then one all-reduce of the whole kernel ({results['lqf_kernel']['all_reduce_bytes'] / 2**20:.0f} MiB, float64) "
        f"joined them; process 0 factorized {results['lqf_kernel']['factorizations_on_process_0']} of the 5 ridges, process 1 the "
        "others, and the chosen solution was broadcast from its process.",
        "",
        f"## One process, before torchrun support (`{BEFORE[:7]}`) and now",
        "",
        f"Train seconds of one-process runs (all cores), the two codes alternating, {REPEATS} runs each:",
        "",
        "| run | before | now |",
        "|---|---|---|",
    ]
    for name in ("finetune", "lqf-kernel"):
        b, n = results["before"][name]["before"], results["before"][name]["now"]
        lines.append(
            f"| {name} | {b['mean']:.2f} ± {b['std']:.2f} ({', '.join(f'{t:.2f}' for t in b['seconds'])}) "
            f"| {n['mean']:.2f} ± {n['std']:.2f} ({', '.join(f'{t:.2f}' for t in n['seconds'])}) |"
        )
    lines.append("")
    with open(os.path.join(HERE, "results", "distributed.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
