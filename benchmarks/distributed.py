# ruff: noqa: E501
"""One process against two under ``torchrun`` on this machine, and the bytes each step sends.

``lqf fit --method finetune`` (efficientnet_lite0, fashion-mnist, 25 images per class, 2 epochs,
batch 64, ``--bn frozen``), ``--method linear-probe`` and ``--method lqf --solver cg`` (each
process makes the tangent factors of its share of the images; every CG product all-reduces the
linearized parameters): one process with all the cores, then
``torchrun --standalone --nproc_per_node 2`` with one thread each (gloo). On a 2-core machine
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
}


def fit(out: str, flags: list[str], processes: int) -> dict:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), "HF_HUB_OFFLINE": "1"}
    args = ["-m", "lqf", "fit", *COMMON, "--out", out, *flags]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)
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


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="lqf-dist-")
    results = {"hardware": hardware(), "command": "python benchmarks/distributed.py", "runs": {}}
    for name, flags in RUNS.items():
        for p in (1, 2):
            r = fit(os.path.join(tmp, f"{name}-{p}"), flags, p)
            results["runs"][f"{name}@{p}"] = r
            print(name, p, r, flush=True)
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
        "(5 KB per image of features), then solve on every process.",
        "",
        f"LQF with multi-shift CG on 2 processes: each made the tangent factors of its half of the images; the solve took "
        f"{results['lqf_cg']['matrix_products']} products with J^T J and made {results['lqf_cg']['all_reduce_calls']} all-reduces "
        f"(one per product, one for J^T r) of {results['lqf_cg']['all_reduce_bytes_each'] / 2**20:.2f} MiB each: the "
        f"{results['lqf_cg']['linearized_parameters']:,} linearized parameters in float32; rows gathered for the outputs and "
        f"accuracies: {results['lqf_cg']['gather_bytes'] / 2**10:.0f} KiB in all.",
        "",
    ]
    with open(os.path.join(HERE, "results", "distributed.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
