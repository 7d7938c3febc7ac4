# ruff: noqa: E501
"""LQF around a fine-tuned core against fine-tuning, the probe and LQF around the pretrained weights.

``efficientnet_lite0`` (ImageNet weights), 64 px, 20 validation images per class, 2,000 test
images. For each data set, images per class and seed (the seed changes the few-shot draw, the
core's draw, the head initialisation and the data order; the test set is fixed):

* ``finetune``: fine-tuning on all training images with the recipe ``benchmarks/baseline.py``
  chose on validation for that data set and size (``RECIPES``);
* ``linear-probe`` and ``lqf`` (around the pretrained weights): ``lqf fit`` defaults;
* per core fraction ``F``: ``core``: the same fine-tuning recipe on the core alone
  (``--core-fraction F``); ``around``: ``lqf --around`` that core on every training image;
  ``around-rest``: on the images outside the core only (``--around-fit rest``); ``core-probe``:
  ``lqf --around`` the core ``--linearize head``, the ridge probe of the core's features on
  every training image (its head's ridge pulls towards the core's head).

Every run is one ``python -m lqf fit`` process (cached under ``benchmarks/runs/around``, so an
interrupted invocation resumes). Part ``forget`` (in this process): the ``around`` run at
``F = 0.5`` (fashion-mnist, 25 images per class, seed 0) forgets 1% and 10% of its images
outside the core by the closed form; its test outputs against the same ridge problem solved again
without them (same linearization point and penalty), and the time against that solve, against
``lqf fit --around`` on the remaining images and against fine-tuning on them.

Usage::

    python benchmarks/lqf_around.py [--data fashion-mnist animal-mnist] [--shots 25 200]
        [--seeds 0 1 2] [--fractions 0.25 0.5 0.75] [--parts accuracy forget]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(HERE, "runs", "around")
sys.path.insert(0, HERE)
from common import fit_run, hardware, summarise  # noqa: E402

#: the fine-tuning recipes benchmarks/baseline.py chose on validation (results/baseline*.md)
RECIPES = {
    ("fashion-mnist", 25): ["--lr", "1e-3", "--bn", "train", "--head-lr-scale", "1"],
    ("animal-mnist", 25): ["--lr", "3e-3", "--bn", "train", "--head-lr-scale", "1"],
    ("fashion-mnist", 200): ["--lr", "3e-3", "--bn", "train", "--head-lr-scale", "1"],
    ("animal-mnist", 200): ["--lr", "1e-3", "--bn", "train", "--head-lr-scale", "1"],
}
#: baseline.py's epochs and batch size per images per class
EPOCHS = {25: 30, 200: 15}
BATCH = 64


def _base(data: str, shots: int, seed: int) -> list[str]:
    return [
        "--model", "efficientnet_lite0", "--data", data, "--shots", str(shots), "--seed", str(seed),
        "--val-per-class", "20", "--max-test", "2000", "--image-size", "64",
    ]  # fmt: skip


def _finetune(data: str, shots: int) -> list[str]:
    return [
        "--method",
        "finetune",
        "--epochs",
        str(EPOCHS[shots]),
        "--batch-size",
        str(BATCH),
        *RECIPES[(data, shots)],
    ]


def runs_of(data: str, shots: int, seed: int, fractions: list[float]) -> dict[str, dict]:
    """Every run of one data set, size and seed: name -> metrics (trained here unless cached)."""
    base = _base(data, shots, seed)
    folder = os.path.join(RUNS, f"{data}-{shots}-{seed}")
    out = {}

    def run(name: str, flags: list[str]) -> dict:
        metrics, _ = fit_run(os.path.join(folder, name), [*base, *flags])
        out[name] = metrics
        return metrics

    run("finetune", _finetune(data, shots))
    run("linear-probe", ["--method", "linear-probe"])
    run("lqf", ["--method", "lqf"])
    for f in fractions:
        core = os.path.join(folder, f"core-{f:g}")
        run(f"core-{f:g}", [*_finetune(data, shots), "--core-fraction", f"{f:g}"])
        run(f"around-{f:g}", ["--method", "lqf", "--around", core])
        run(f"around-rest-{f:g}", ["--method", "lqf", "--around", core, "--around-fit", "rest"])
        run(f"core-probe-{f:g}", ["--method", "lqf", "--around", core, "--linearize", "head"])
    return out


def part_accuracy(datasets: list[str], shots: list[int], seeds: list[int], fractions: list[float]) -> dict:
    table: dict = {}
    for data in datasets:
        for k in shots:
            per_seed = [runs_of(data, k, s, fractions) for s in seeds]
            names = list(per_seed[0])
            rows = {}
            for name in names:
                ms = [r[name] for r in per_seed]
                rows[name] = {
                    "test_accuracy": summarise([m["test_accuracy"] for m in ms]),
                    "val_accuracy": summarise([m["val_accuracy"] for m in ms]),
                    "train_seconds": summarise([m["train_seconds"] for m in ms]),
                    "peak_memory_mb": summarise([m["peak_memory_mb"] for m in ms]),
                    "n_train": ms[0].get("n_train"),
                }
            table[f"{data}@{k}"] = {"data": data, "shots": k, "seeds": seeds, "rows": rows}
            print(
                data, k, {n: round(100 * v["test_accuracy"]["mean"], 2) for n, v in rows.items()}, flush=True
            )
    return table


def _core_copy(core_dir: str, removed: list[int], n: int) -> str:
    """A copy of the core run whose ``core.json`` counts positions in the split without ``removed``."""
    import shutil
    import tempfile

    out = os.path.join(tempfile.mkdtemp(prefix="lqf-core-"), "core")
    shutil.copytree(core_dir, out)
    with open(os.path.join(out, "core.json")) as handle:
        core = json.load(handle)
    gone = set(removed)
    shift = [0] * n
    for i in range(1, n):
        shift[i] = shift[i - 1] + (i - 1 in gone)
    core["positions"] = [p - shift[p] for p in core["positions"]]
    core["n_train"] = n - len(removed)
    with open(os.path.join(out, "core.json"), "w") as handle:
        json.dump(core, handle)
    return out


def part_forget() -> dict:
    import torch

    from lqf.config import FitConfig, from_dict
    from lqf.data import load_config_data
    from lqf.data.imageset import DataSplits
    from lqf.explain import Explainer
    from lqf.explain.ridge import DualRidge
    from lqf.linearization.factors import JacobianFactors
    from lqf.methods import get_method
    from lqf.runs import RunDirectory
    from lqf.runs.fit import fit
    from lqf.training.evaluate import apply

    torch.set_num_threads(2)
    folder = os.path.join(RUNS, "fashion-mnist-25-0")
    core_dir, around_dir = os.path.join(folder, "core-0.5"), os.path.join(folder, "around-0.5")
    runs_of("fashion-mnist", 25, 0, [0.5])
    run = RunDirectory.existing(around_dir)
    config = from_dict(FitConfig, run.read_config()["run"], source=run.file("config.json"))
    options = from_dict(
        get_method("lqf").Options, run.read_config()["method_options"], source=run.file("config.json")
    )
    data = load_config_data(config)
    ex = Explainer.from_run(around_dir)
    n = ex.n
    core = set(json.load(open(os.path.join(core_dir, "core.json")))["positions"])
    outside = [i for i in range(n) if i not in core]
    order = torch.randperm(len(outside), generator=torch.Generator().manual_seed(1)).tolist()
    test = JacobianFactors(ex.model.linear, apply(ex.model.features_in, data.test, batch_size=256))
    z = apply(ex.model.features_in, ex.train, batch_size=256)
    out: dict = {"n_train": n, "core": len(core), "rows": []}
    ft_config = from_dict(
        FitConfig,
        {**run.read_config()["run"], "method": "finetune", "epochs": EPOCHS[25], "batch_size": BATCH},
        source="the forget part",
    )
    recipe = RECIPES[("fashion-mnist", 25)]
    ft_options = get_method("finetune").Options(
        lr=float(recipe[1]), bn=recipe[3], head_lr_scale=float(recipe[5])
    )
    for share in (0.01, 0.10):
        k = max(1, round(share * len(outside)))
        removed = sorted(outside[i] for i in order[:k])
        start = time.perf_counter()
        model = ex.forget(removed)
        forget_s = time.perf_counter() - start
        keep = torch.ones(n, dtype=torch.bool)
        keep[removed] = False
        start = time.perf_counter()
        delta = DualRidge(JacobianFactors(ex.model.linear, z[keep]), ex.targets[keep], ex.view.mu).delta()
        same_s = time.perf_counter() - start
        want = test.outputs.double() + test.jvp([d.to(test.dtype) for d in delta]).double()
        got = test.outputs.double() + test.jvp([d.detach() for d in model.linear.delta]).double()
        reduced = DataSplits(data.name, data.train.subset(keep), data.val, data.test, data.classes)
        # the same core, its positions counted in the reduced split (only images outside it go)
        moved = _core_copy(core_dir, removed, n)
        start = time.perf_counter()
        fit(config, dataclasses.replace(options, around=moved), data=reduced, quiet=True)
        refit_s = time.perf_counter() - start
        start = time.perf_counter()
        fit(ft_config, ft_options, data=reduced, quiet=True)
        finetune_s = time.perf_counter() - start
        row = {
            "share_of_outside": share,
            "removed": k,
            "max_test_output_difference": float((got - want).abs().max() / want.abs().max()),
            "forget_seconds": forget_s,
            "same_problem_seconds": same_s,
            "lqf_fit_seconds": refit_s,
            "finetune_seconds": finetune_s,
            "speedup_vs_lqf_fit": refit_s / forget_s,
            "speedup_vs_same_problem": same_s / forget_s,
            "speedup_vs_finetune": finetune_s / forget_s,
        }
        out["rows"].append(row)
        print(row, flush=True)
    return out


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def report(results: dict) -> str:
    hw = results["hardware"]
    lines = [
        "# LQF around a fine-tuned core",
        "",
        f"Command: `{results['command']}`. Hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} on the CPU. "
        f"Wall time {results['wall_seconds'] / 60:.0f} min. efficientnet_lite0, 64 px, 20 validation images per class, "
        "2,000 test images; mean ± std over the seeds. `train s` is each run's own; the `around` runs' cost adds their "
        "core's.",
        "",
    ]
    for block in results.get("accuracy", {}).values():
        rows = block["rows"]
        lines += [
            f"## {block['data']}, {block['shots']} images per class (seeds {block['seeds']})",
            "",
            "| run | training images | test accuracy | val accuracy | train s | peak MiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['n_train']} | {_pct(r['test_accuracy'])} | {_pct(r['val_accuracy'])} "
                f"| {r['train_seconds']['mean']:.0f} | {r['peak_memory_mb']['mean']:.0f} |"
            )
        ft = rows["finetune"]["test_accuracy"]["mean"]
        probe = rows["linear-probe"]["test_accuracy"]["mean"]
        lqf = rows["lqf"]["test_accuracy"]["mean"]
        lines += [
            "",
            "| core F | around − finetune | around − max(probe, lqf) | around − core alone | around − core probe | rest − all (val) |",
            "|---|---|---|---|---|---|",
        ]
        for name in rows:
            if not name.startswith("around-") or name.startswith("around-rest"):
                continue
            f = name.split("-", 1)[1]
            a = rows[name]["test_accuracy"]["mean"]
            rest_val = rows[f"around-rest-{f}"]["val_accuracy"]["mean"] - rows[name]["val_accuracy"]["mean"]
            lines.append(
                f"| {f} | {100 * (a - ft):+.2f} | {100 * (a - max(probe, lqf)):+.2f} "
                f"| {100 * (a - rows[f'core-{f}']['test_accuracy']['mean']):+.2f} "
                f"| {100 * (a - rows[f'core-probe-{f}']['test_accuracy']['mean']):+.2f} | {100 * rest_val:+.2f} |"
            )
        lines.append("")
    if "forget" in results:
        fg = results["forget"]
        lines += [
            f"## Forgetting outside the core (fashion-mnist, 25 per class, seed 0, core 0.5: {fg['core']} of {fg['n_train']} images)",
            "",
            "| share of the images outside the core | images | test outputs vs the same problem solved again | forget s | same problem s | `lqf fit --around` s | fine-tune s | x same problem | x lqf fit | x fine-tune |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fg["rows"]:
            lines.append(
                f"| {100 * r['share_of_outside']:.0f}% | {r['removed']} | {r['max_test_output_difference']:.1e} | {r['forget_seconds']:.2f} "
                f"| {r['same_problem_seconds']:.1f} | {r['lqf_fit_seconds']:.1f} | {r['finetune_seconds']:.1f} "
                f"| {r['speedup_vs_same_problem']:.0f} | {r['speedup_vs_lqf_fit']:.0f} | {r['speedup_vs_finetune']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["fashion-mnist", "animal-mnist"])
    parser.add_argument("--shots", nargs="+", type=int, default=[25, 200])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--parts", nargs="+", default=["accuracy", "forget"], choices=("accuracy", "forget"))
    parser.add_argument("--report", action="store_true", help="rewrite lqf_around.md from lqf_around.json")
    args = parser.parse_args(argv)
    path = os.path.join(RESULTS, "lqf_around.json")
    if args.report:
        with open(path) as handle:
            results = json.load(handle)
    else:
        start = time.perf_counter()
        results = {
            "hardware": hardware(),
            "command": "python benchmarks/lqf_around.py " + " ".join(argv or sys.argv[1:]),
        }
        if "accuracy" in args.parts:
            results["accuracy"] = part_accuracy(args.data, args.shots, args.seeds, args.fractions)
        if "forget" in args.parts:
            results["forget"] = part_forget()
        results["wall_seconds"] = time.perf_counter() - start
        with open(path + ".tmp", "w") as handle:
            json.dump(results, handle, indent=1)
        os.replace(path + ".tmp", path)
    with open(os.path.join(RESULTS, "lqf_around.md"), "w") as handle:
        handle.write(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
