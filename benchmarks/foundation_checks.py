"""Measured checks of the foundation: the weight mapping, one fit, the demo.

1. EfficientNet-Lite0/1/2: the largest absolute logit difference between the
   shipped weights in timm's architecture and in the architecture they were
   published with, on scikit-learn's two sample photographs at native size.
2. ``lqf fit --model efficientnet_lite0 --data fashion-mnist --method finetune --shots 10``
   with default settings: wall time, test accuracy, files written.
3. ``lqf demo`` with default settings: wall time and the accuracies it reports.

Each command runs in its own process; results go to
``benchmarks/results/foundation_checks.{json,md}``.

Usage::

    python benchmarks/foundation_checks.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def mapping_differences() -> dict[str, float]:
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from sklearn.datasets import load_sample_images

    from lqf.models.efficientnet_lite import VARIANTS, build_timm_lite, weights_path

    photos = [torch.tensor(im).permute(2, 0, 1)[None].float() for im in load_sample_images().images]
    out = {}
    for name, (_, size) in VARIANTS.items():
        x = torch.cat(
            [
                torch.nn.functional.interpolate(p, size=(size, size), mode="bilinear", antialias=True)
                for p in photos
            ]
        )
        x = x / 127.5 - 1.0
        reference = EfficientNet.from_pretrained(
            name.replace("_", "-"), weights_path=weights_path(name)
        ).eval()
        with torch.no_grad():
            out[name] = (build_timm_lite(name)(x) - reference(x)).abs().max().item()
    return out


def timed(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    lqf = [sys.executable, "-m", "lqf"]
    work = tempfile.mkdtemp(prefix="lqf-checks-")
    try:
        fit_cmd = [
            "fit",
            "--model",
            "efficientnet_lite0",
            "--data",
            "fashion-mnist",
            "--method",
            "finetune",
            "--shots",
            "10",
            "--out",
            "ft10",
            "--quiet",
        ]
        fit_seconds = timed([*lqf, *fit_cmd], work)
        with open(os.path.join(work, "ft10", "metrics.json")) as handle:
            fit_metrics = json.load(handle)
        fit_files = sorted(os.listdir(os.path.join(work, "ft10")))
        demo_seconds = timed([*lqf, "demo", "--quiet"], work)
        demo = {}
        for method in sorted(os.listdir(os.path.join(work, "runs", "demo"))):
            path = os.path.join(work, "runs", "demo", method, "metrics.json")
            if os.path.isfile(path):
                with open(path) as handle:
                    m = json.load(handle)
                demo[method] = {k: m[k] for k in ("test_accuracy", "train_seconds", "n_train", "n_test")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from common import hardware

    payload = {
        "command": "python benchmarks/foundation_checks.py",
        "hardware": hardware(),
        "mapping_max_abs_logit_difference": mapping_differences(),
        "fit": {
            "command": "lqf " + " ".join(fit_cmd),
            "wall_seconds": fit_seconds,
            "test_accuracy": fit_metrics["test_accuracy"],
            "n_test": fit_metrics["n_test"],
            "files": fit_files,
        },
        "demo": {"command": "lqf demo", "wall_seconds": demo_seconds, "methods": demo},
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "foundation_checks.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    hw = payload["hardware"]
    lines = [
        "# Foundation checks",
        "",
        f"Command: `{payload['command']}`. Hardware: {hw['cpu']}, {hw['cores']} cores, "
        f"torch {hw['torch']} on the CPU.",
        "",
        "Largest absolute logit difference, shipped EfficientNet-Lite weights in timm's architecture vs the",
        "architecture they were published with (two sample photographs, native resolution):",
        "",
        *[f"- {k}: {v:.3g}" for k, v in payload["mapping_max_abs_logit_difference"].items()],
        "",
        f"`{payload['fit']['command']}` (default settings): {fit_seconds:.0f} s wall time, test accuracy "
        f"{100 * fit_metrics['test_accuracy']:.1f}% on {fit_metrics['n_test']} images; wrote "
        + ", ".join(f"`{f}`" for f in fit_files)
        + ".",
        "",
        f"`lqf demo`: {demo_seconds:.0f} s wall time in all.",
        "",
        "| method | test accuracy | train s | train images | test images |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {100 * v['test_accuracy']:.1f} | {v['train_seconds']:.0f} "
            f"| {v['n_train']} | {v['n_test']} |"
            for k, v in demo.items()
        ],
    ]
    with open(os.path.join(RESULTS, "foundation_checks.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
