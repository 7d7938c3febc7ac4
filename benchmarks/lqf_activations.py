"""What the Leaky-ReLU swap does to the linear probe: ridge-probe accuracy on the swapped network.

LQF's first change replaces the ReLU6 activations of the pretrained network by Leaky-ReLU. The
network was pretrained with ReLU6, so the swap changes its features; this measures how much, with
the ridge linear probe that LQF fits as its head before linearizing (the same ridge path and
validation choice as ``lqf.methods.lqf.fit_probe_head``). Variants: the original network; slope
0.01 and 0.1 keeping ReLU6's upper clip; slope 0.1 without the clip; slope 0.1 repaired by 100
distillation steps on the training images (``lqf.linearization.repair.distill``, as
``--repair-steps 100``). ``efficientnet_lite0``, 64 px, 10 images per class, 20 validation images
per class, seeds 0, 1, 2, full test sets. LQF's own accuracy with the same swaps is in
``benchmarks/results/lqf_accuracy.md`` (ablation rows).

Usage::

    python benchmarks/lqf_activations.py [--shots 10] [--max-test N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from common import hardware  # noqa: E402

DATA = ("fashion-mnist", "animal-mnist")
SEEDS = (0, 1, 2)
#: name -> (slope, keep the ReLU6 clip, distillation steps)
VARIANTS = {
    "original (ReLU6)": (0.0, True, 0),
    "leaky 0.01": (0.01, True, 0),
    "leaky 0.1": (0.1, True, 0),
    "leaky 0.1, no clip": (0.1, False, 0),
    "leaky 0.1, repaired": (0.1, True, 100),
}


def probe_accuracy(model, data, cache: dict, key) -> tuple[float, float]:
    """Validation and test accuracy of the ridge probe on ``model``'s features (penalty on val).

    The test features of a network that does not depend on the seed are computed once (``cache``
    under ``key``; ``key=None``: not cached)."""
    from lqf.methods.lqf import fit_probe_head
    from lqf.training.evaluate import apply

    ftr, fva = (apply(model.embed, split) for split in (data.train, data.val))
    if key is None or key not in cache:
        fte = apply(model.embed, data.test)
        if key is not None:
            cache[key] = fte
    fte = cache[key] if key is not None else fte
    fit_probe_head(model, ftr, data.train.labels, fva, data.val.labels)
    with torch.no_grad():
        val = (model.head(fva).argmax(1) == data.val.labels).float().mean().item()
        test = (model.head(fte).argmax(1) == data.test.labels).float().mean().item()
    return val, test


def main(argv: list[str] | None = None) -> int:
    from lqf.data import load_data
    from lqf.linearization.activations import swap_activations
    from lqf.linearization.repair import distill
    from lqf.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--max-test", type=int, default=None, help="a fixed test subset (default: all)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    started = time.time()
    rows = []
    cache: dict = {}
    for name in DATA:
        for variant, (slope, clip, steps) in VARIANTS.items():
            per_seed = []
            for seed in SEEDS:
                data = load_data(name, shots=args.shots, val_per_class=20, seed=seed, max_test=args.max_test)
                model = build_model(
                    "efficientnet_lite0", len(data.classes), generator=torch.Generator().manual_seed(seed)
                )
                model.eval()
                original = copy.deepcopy(model) if steps else None
                if slope > 0:
                    swap_activations(model, slope, clip)
                if original is not None:
                    images = torch.cat([x for x, _ in data.train.batches(256)])
                    distill(
                        model,
                        original,
                        images,
                        steps=steps,
                        generator=torch.Generator().manual_seed(seed + 7),
                    )
                val, test = probe_accuracy(model, data, cache, None if steps else (name, variant))
                per_seed.append({"seed": seed, "val_accuracy": val, "test_accuracy": test})
                print(f"{name} {variant} seed {seed}: val {100 * val:.2f} test {100 * test:.2f}", flush=True)
            tests = [100 * r["test_accuracy"] for r in per_seed]
            rows.append(
                {
                    "data": name,
                    "variant": variant,
                    "slope": slope,
                    "clip": clip,
                    "repair_steps": steps,
                    "per_seed": per_seed,
                    "test_mean": statistics.mean(tests),
                    "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                }
            )
    command = " ".join(
        ["python benchmarks/lqf_activations.py", *(argv if argv is not None else sys.argv[1:])]
    )
    payload = {"command": command, "hardware": hardware(), "seconds": time.time() - started, "results": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "lqf_activations.json"), "w") as handle:
        json.dump(payload, handle, indent=1)
    lines = [
        "# Leaky-ReLU swap: the ridge linear probe on the swapped network",
        "",
        f"Command: `{command}`. Hardware: {payload['hardware']['cpu']}, "
        f"{payload['hardware']['cores']} cores, torch {payload['hardware']['torch']}; "
        f"{payload['seconds'] / 60:.0f} min.",
        "",
        f"`efficientnet_lite0` (ImageNet weights, pretrained with ReLU6), 64 px, {args.shots} images per "
        "class, 20 validation images per class (the probe's penalty is chosen on them), "
        + ("full test sets; " if args.max_test is None else f"a fixed {args.max_test} test images; ")
        + "test accuracy in %, mean ± std over seeds 0, 1, 2.",
        "",
        "| data | network | probe test accuracy | Δ vs original |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ref = next(x for x in rows if x["data"] == r["data"] and x["slope"] == 0)
        delta = "" if r is ref else f"{r['test_mean'] - ref['test_mean']:+.2f}"
        lines.append(
            f"| {r['data']} | {r['variant']} | {r['test_mean']:.2f} ± {r['test_std']:.2f} | {delta} |"
        )
    with open(os.path.join(RESULTS, "lqf_activations.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
