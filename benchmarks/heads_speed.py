"""Head inference time and size: learned ``nn.Linear`` vs fixed Hadamard (dense and fast).

1. At ``d = 1280`` (efficientnet_lite0's features), batch 256 and
   ``C`` in {10, 10^3, 10^4, 10^5}: the median wall time of one forward pass
   (``torch.no_grad``, synthetic Gaussian features) of

   * ``linear``: ``nn.Linear(d, C)``, the learned head;
   * ``fixed dense``: ``FixedClassifier(d, C, "hadamard", path="dense")``, the
     stored ``C x d`` matrix and one matrix product;
   * ``fixed fast``: ``path="fast"``, the fast Walsh-Hadamard transform, no
     stored matrix;

   with trainable parameters, the bytes the head holds (parameters and
   buffers) and the size of its state dict (normal and compact).
2. The switch rule of ``path="auto"``: fast vs dense over a grid of ``(d, C)``;
   the smallest ``C * d`` from which the fast path wins at every larger size
   of the grid is the threshold ``FAST_MIN_MACS`` in ``lqf/heads/fixed.py``.

Every timing is the median of repeated calls after warm-up, in one process with
``torch.set_num_threads(threads)``. Results: ``benchmarks/results/heads_speed.{json,md}``;
with ``--device cuda`` (each call timed between two ``torch.cuda.synchronize()``, PyTorch's
default precision: no TF32 in matrix products) ``heads_speed_cuda.{json,md}``.

Usage::

    python benchmarks/heads_speed.py                  # about 3 minutes on 2 cores
    python benchmarks/heads_speed.py --device cuda    # under a minute on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from lqf.heads import FixedClassifier, compact_state_dict  # noqa: E402


def median_seconds(fn, x: torch.Tensor, min_time: float = 0.5, min_reps: int = 5) -> float:
    """Median wall time of ``fn(x)`` over at least ``min_reps`` calls and ``min_time`` seconds
    (on a GPU from a synchronised start to the synchronised end of each call)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        for _ in range(2):
            fn(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_reps or time.perf_counter() - start < min_time:
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= 2000:
                break
    return statistics.median(times)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def heads(d: int, c: int) -> dict[str, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.utils.skip_init(nn.Linear, d, c)
    with torch.no_grad():
        linear.weight.uniform_(-(d**-0.5), d**-0.5, generator=gen)
        linear.bias.zero_()
    return {
        "linear": linear,
        "fixed dense": FixedClassifier(d, c, "hadamard", path="dense"),
        "fixed fast": FixedClassifier(d, c, "hadamard", path="fast"),
    }


def main_table(d: int, classes: list[int], batch: int, device: str = "cpu") -> list[dict]:
    rows = []
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device)
    for c in classes:
        built = {name: h.to(device) for name, h in heads(d, c).items()}
        ref = built["fixed dense"](x)
        assert torch.allclose(built["fixed fast"](x), ref, rtol=1e-4, atol=1e-4)
        times = {name: median_seconds(h, x) for name, h in built.items()}
        for name, h in built.items():
            rows.append(
                {
                    "d": d,
                    "C": c,
                    "batch": batch,
                    "head": name,
                    "ms": 1e3 * times[name],
                    "speedup_vs_linear": times["linear"] / times[name],
                    "trainable_parameters": sum(p.numel() for p in h.parameters() if p.requires_grad),
                    "held_bytes": nbytes(list(h.parameters()) + list(h.buffers())),
                    "state_dict_bytes": nbytes(h.state_dict().values()),
                    "compact_state_dict_bytes": nbytes(compact_state_dict(h).values()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del built
    return rows


def switch_grid(batch: int, device: str = "cpu", classes: tuple[int, ...] = (2, 10, 100, 1000)) -> list[dict]:
    rows = []
    for d in (16, 64, 256, 1280, 4096):
        x = torch.randn(batch, d, generator=torch.Generator().manual_seed(2)).to(device)
        for c in classes:
            dense = FixedClassifier(d, c, "hadamard", path="dense").to(device)
            fast = FixedClassifier(d, c, "hadamard", path="fast").to(device)
            t_dense, t_fast = median_seconds(dense, x, 0.2), median_seconds(fast, x, 0.2)
            rows.append({"d": d, "C": c, "batch": batch, "dense_us": 1e6 * t_dense, "fast_us": 1e6 * t_fast})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def threshold(grid: list[dict]) -> int | None:
    """Smallest ``C * d`` such that the fast path wins at it and every larger grid size."""
    ordered = sorted(grid, key=lambda r: r["d"] * r["C"])
    for i, r in enumerate(ordered):
        if all(s["fast_us"] <= s["dense_us"] for s in ordered[i:]):
            return r["d"] * r["C"]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--classes", nargs="+", type=int, default=[10, 1000, 10_000, 100_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the notes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    started = time.time()
    table = main_table(args.d, args.classes, args.batch, args.device)
    # on a GPU the grid goes on to larger C: the dense product stays fast there much longer
    grid = switch_grid(
        args.batch, args.device, (2, 10, 100, 1000, 10_000, 100_000) if cuda else (2, 10, 100, 1000)
    )
    from common import hardware

    gpu = {"device": args.device, "gpu": torch.cuda.get_device_name(args.device)} if cuda else {}
    payload = {
        "command": "python benchmarks/heads_speed.py" + (f" --device {args.device}" if cuda else ""),
        "hardware": {**hardware(), **gpu, "torch_threads": torch.get_num_threads()},
        "wall_seconds": time.time() - started,
        "table": table,
        "switch_grid": grid,
        "measured_threshold_macs": threshold(grid),
    }
    os.makedirs(RESULTS, exist_ok=True)
    name = "heads_speed_cuda" if cuda else "heads_speed"
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    write_markdown(payload, args, name)
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def write_markdown(p: dict, args: argparse.Namespace, name: str = "heads_speed") -> None:
    hw = p["hardware"]
    where = (
        f"{hw['gpu']} (host: {hw['cpu']}, {hw['cores']} cores)"
        if "gpu" in hw
        else f"{hw['cpu']}, {hw['cores']} cores"
    )
    lines = [
        "# Classifier head inference: learned vs fixed Hadamard (dense, fast transform)",
        "",
        f"Command: `{p['command']}`. Hardware: {where}, "
        f"{hw['torch_threads']} torch threads, torch {hw['torch']}. Wall time {p['wall_seconds']:.0f} s.",
        f"Forward pass of the head alone on synthetic features `({args.batch}, {args.d})`, "
        "`torch.no_grad`, median over repeated calls after warm-up.",
        "",
        "| C | head | time ms | speed-up vs linear | trainable params | held by head | state dict "
        "| compact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in p["table"]:
        lines.append(
            f"| {r['C']:,} | {r['head']} | {r['ms']:.3f} | {r['speedup_vs_linear']:.1f}x "
            f"| {r['trainable_parameters']:,} | {_size(r['held_bytes'])} | {_size(r['state_dict_bytes'])} "
            f"| {_size(r['compact_state_dict_bytes'])} |"
        )
    lines += [
        "",
        'Switch rule (`path="auto"`): fast transform vs dense product, batch '
        f"{args.batch}, microseconds per call:",
        "",
        "| d | C | C·d | dense µs | fast µs | faster |",
        "|---|---|---|---|---|---|",
    ]
    for r in p["switch_grid"]:
        faster = "fast" if r["fast_us"] <= r["dense_us"] else "dense"
        lines.append(
            f"| {r['d']} | {r['C']} | {r['d'] * r['C']:,} | {r['dense_us']:.0f} | {r['fast_us']:.0f} "
            f"| {faster} |"
        )
    rule = (
        "`FAST_MIN_MACS` in `lqf/heads/fixed.py` is set from the CPU's measurement, heads_speed.md"
        if "gpu" in hw
        else "`FAST_MIN_MACS` in `lqf/heads/fixed.py` is set from it"
    )
    lines += [
        "",
        f"Smallest C·d from which the fast path wins at every larger size of the grid: "
        f"{p['measured_threshold_macs']} ({rule}).",
        "",
        "Notes:",
        "- The fast path folds the d inputs to the period k = min(p2(C + 1), p2(d)), runs a length-k "
        "Walsh-Hadamard transform and tiles it to C outputs: O(B (d + C + k log k)) additions against "
        "the O(B C d) multiply-adds of a dense head.",
        "- `held by head`: parameters and buffers; the output `(B, C)` (the same for every head) is not "
        "counted. The fixed heads train 1 + C numbers (scale and bias).",
    ]
    if "gpu" not in hw:
        lines += [
            "- One torch thread: the 2-core machine was shared with other jobs during the measurement, and "
            "with 2 threads every kernel waits for both, so a descheduled thread stalls each of the "
            "transform's ~2 log2 k small kernels (a first attempt with 2 threads measured 376 ms for the "
            "fast head at C = 1,000, against about 2 ms on one thread). Each timing is a median, so short "
            "interruptions do not move it much.",
        ]
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
