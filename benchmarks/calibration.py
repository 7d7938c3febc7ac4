# ruff: noqa: E501
"""How well calibrated: LQF's exact predictive variance against fine-tuning, temperature scaling,
laplace-torch and the probe, on the same images.

For each data set, size and seed (efficientnet_lite0, 64 px, 20 validation images per class,
2,000 test images), three cached ``lqf fit`` runs (fine-tuning with the recipe of
``benchmarks/lqf_around.py``, the ridge probe, LQF), then on their test images:

* ``finetune``: the softmax of the fine-tuned network;
* ``finetune+T``: the same logits over a temperature chosen on validation (NLL, a grid);
* ``laplace``: laplace-torch on the fine-tuned network: last layer, Kronecker-factored Hessian,
  prior precision by marginal likelihood, GLM predictive with the probit approximation;
  ``laplace+val``: the same with the prior precision from laplace-torch's grid search (1e-4 to 1e6) on the
  validation images' NLL;
* ``probe``: the softmax of the ridge probe's outputs (what ``lqf evaluate`` reports), and
  ``probe+T`` with a temperature chosen on validation, and ``probe+var``, the probe with its exact
  predictive variance (temperature and noise chosen on validation);
* ``lqf``, ``lqf+T``, ``lqf+var``: the same three for LQF (``lqf+var`` is what ``lqf predict`` gives).

Metrics (``lqf.training.metrics``): accuracy, ECE (15 bins), NLL, Brier, and accuracy at 80%
coverage (the least confident 20% rejected, confidence = top probability). Cost: the time of the
variance of the test images against the time of predicting them (the model's forward passes),
on the same images in the same process. Everything chosen on validation; the test split is read
only to report. Results: ``benchmarks/results/calibration.{md,json}``, written after every
data set, size and seed.

Usage::

    python benchmarks/calibration.py [--data fashion-mnist animal-mnist] [--shots 25 100] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import fit_run, hardware, summarise  # noqa: E402

RUNS = os.path.join(HERE, "runs", "calibration")
RESULTS = os.path.join(HERE, "results")
#: fine-tuning recipes: 25 per class as benchmarks/baseline.py chose them on validation; 100 per
#: class: lqf's default recipe for more than 10 images per class, epochs between baseline's 30 (25)
#: and 15 (200), not tuned
FINETUNE = {
    ("fashion-mnist", 25): ["--lr", "1e-3", "--bn", "train", "--head-lr-scale", "1", "--epochs", "30"],
    ("animal-mnist", 25): ["--lr", "3e-3", "--bn", "train", "--head-lr-scale", "1", "--epochs", "30"],
    ("fashion-mnist", 100): ["--epochs", "20"],
    ("animal-mnist", 100): ["--epochs", "20"],
}
METHODS = [
    "finetune",
    "finetune+T",
    "laplace",
    "laplace+val",
    "probe",
    "probe+T",
    "probe+var",
    "lqf",
    "lqf+T",
    "lqf+var",
]
TEMPERATURES = tuple(10 ** (k / 16) for k in range(-48, 33))


def base(data: str, shots: int, seed: int) -> list[str]:
    return [
        "--model", "efficientnet_lite0", "--data", data, "--shots", str(shots), "--seed", str(seed),
        "--val-per-class", "20", "--max-test", "2000", "--image-size", "64",
    ]  # fmt: skip


def tensors(images):
    import torch

    x = torch.cat([b for b, _ in images.batches(256)])
    return x, images.labels


def temperature(logits, labels) -> float:
    """The temperature of the lowest validation NLL on ``TEMPERATURES``."""
    import torch

    best = None
    for t in TEMPERATURES:
        p = torch.softmax(logits.double() / t, 1)
        nll = float(-torch.log(p[torch.arange(len(labels)), labels].clamp_min(1e-300)).mean())
        if best is None or nll < best[0]:
            best = (nll, t)
    return best[1]


def metrics_of(probs, labels, classes) -> dict:
    from lqf.training.metrics import classification_metrics

    m = classification_metrics(probs.log(), labels, classes, probs=probs)
    return {k: m[k] for k in ("accuracy", "ece", "nll", "brier", "accuracy_at_80")}


def laplace_probs(model, train, test_x, val_x, val_labels, tuning: str = "marglik"):
    """laplace-torch: last layer, Kronecker, GLM predictive with the probit; prior precision by the
    marginal likelihood (``marglik``) or by laplace-torch's grid search on validation NLL (``val``)."""
    import torch
    from laplace import Laplace

    x, y = tensors(train)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model.eval()
    la = Laplace(model, "classification", subset_of_weights="last_layer", hessian_structure="kron")
    la.fit(loader)
    if tuning == "marglik":
        la.optimize_prior_precision(pred_type="glm", method="marglik", link_approx="probit")
    else:
        val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val_x, val_labels), batch_size=256)
        la.optimize_prior_precision(
            pred_type="glm",
            method="gridsearch",
            val_loader=val,
            link_approx="probit",
            grid_size=61,
            log_prior_prec_max=6,
        )

    def predict(images):
        out = []
        for lo in range(0, len(images), 256):
            with torch.no_grad():
                out.append(la(images[lo : lo + 256], pred_type="glm", link_approx="probit").double())
        return torch.cat(out)

    return predict(test_x), float(la.prior_precision.mean())


def one(data: str, shots: int, seed: int) -> dict:
    """Every method's test metrics for one data set, size and seed."""
    import torch

    from lqf.data import load_config_data
    from lqf.explain import Explainer
    from lqf.explain.uncertainty import fit_calibration
    from lqf.runs.fit import load_run

    folder = os.path.join(RUNS, f"{data}-{shots}-{seed}")
    flags = base(data, shots, seed)
    paths = {
        "finetune": (["--method", "finetune", "--batch-size", "64", *FINETUNE[(data, shots)]]),
        "probe": ["--method", "linear-probe"],
        "lqf": ["--method", "lqf"],
    }
    fitted = {}
    for name, extra in paths.items():
        fitted[name], _ = fit_run(os.path.join(folder, name), [*flags, *extra])
    config = load_run(os.path.join(folder, "finetune"))[0]
    split = load_config_data(config)
    classes = split.classes
    test_x, test_y = tensors(split.test)
    val_x, val_y = tensors(split.val)
    out: dict = {"data": data, "shots": shots, "seed": seed, "methods": {}, "cost": {}}

    # fine-tuning: softmax, temperature scaling, laplace-torch
    _, _, model, _ = load_run(os.path.join(folder, "finetune"))
    model.eval()
    with torch.no_grad():
        test_logits = torch.cat([model(test_x[lo : lo + 256]) for lo in range(0, len(test_x), 256)]).double()
        val_logits = torch.cat([model(val_x[lo : lo + 256]) for lo in range(0, len(val_x), 256)]).double()
    out["methods"]["finetune"] = metrics_of(torch.softmax(test_logits, 1), test_y, classes)
    t = temperature(val_logits, val_y)
    out["methods"]["finetune+T"] = metrics_of(torch.softmax(test_logits / t, 1), test_y, classes) | {
        "temperature": t
    }
    for name, tuning in (("laplace", "marglik"), ("laplace+val", "val")):
        start = time.perf_counter()
        probs, prior = laplace_probs(model, split.train, test_x, val_x, val_y, tuning)
        out["methods"][name] = metrics_of(probs, test_y, classes) | {
            "prior_precision": prior,
            "mean_confidence": float(probs.max(1).values.mean()),
            "seconds": time.perf_counter() - start,
        }

    # the linear runs: softmax of their scores, a temperature, and the exact variance
    for name in ("probe", "lqf"):
        ex = Explainer.from_run(os.path.join(folder, name))
        start = time.perf_counter()
        test_scores = torch.cat([ex.predict(test_x[lo : lo + 256]) for lo in range(0, len(test_x), 256)])
        predict_seconds = time.perf_counter() - start
        val_mean, val_var = ex.predict_with_variance(val_x)
        start = time.perf_counter()
        test_mean, test_var = ex.predict_with_variance(test_x)
        variance_seconds = time.perf_counter() - start
        out["methods"][name] = metrics_of(torch.softmax(test_scores, 1), test_y, classes)
        t = temperature(val_mean, val_y)
        out["methods"][f"{name}+T"] = metrics_of(torch.softmax(test_mean / t, 1), test_y, classes) | {
            "temperature": t
        }
        cal = fit_calibration(val_mean, val_var, val_y)
        out["methods"][f"{name}+var"] = metrics_of(cal(test_mean, test_var), test_y, classes) | {
            "temperature": cal.temperature,
            "noise": cal.noise,
            "val_nll": cal.val_nll,
        }
        out["cost"][name] = {
            "predict_seconds": predict_seconds,
            "predict_with_variance_seconds": variance_seconds,
            "ratio": variance_seconds / predict_seconds,
            "test_images": len(test_x),
        }
    print(
        data,
        shots,
        seed,
        {
            k: (round(100 * v["accuracy"], 2), round(v["ece"], 4), round(v["nll"], 3))
            for k, v in out["methods"].items()
        },
        flush=True,
    )
    return out


def report(results: dict) -> str:
    hw = results["hardware"]
    lines = [
        "# Calibration: LQF's exact predictive variance against fine-tuning, temperature scaling, laplace-torch and the probe",
        "",
        f"Command: `{results['command']}`. Hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']}. "
        "efficientnet_lite0 at 64 px, 20 validation images per class, 2,000 test images; mean ± sample std over the "
        "seeds listed. Temperatures, noise and laplace-torch's prior precision are chosen on validation (or by the "
        "marginal likelihood); test images only report. `+T`: a temperature on the softmax; `+var`: the exact "
        "posterior variance with its temperature and noise (what `lqf predict` shows). Accuracy at 80%: the least "
        "confident 20% of test images rejected.",
        "",
    ]
    for cell in results["cells"].values():
        seeds = cell["seeds"]
        lines += [
            f"## {cell['data']}, {cell['shots']} images per class (seeds {', '.join(map(str, seeds))})",
            "",
        ]
        lines += ["| method | accuracy | ECE | NLL | Brier | accuracy at 80% |", "|---|---|---|---|---|---|"]
        for name in METHODS:
            row = cell["methods"].get(name)
            if row is None:
                continue

            def fmt(metric: str, scale: float = 1.0, digits: int = 3, row: dict = row) -> str:
                s = row[metric]
                return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"

            lines.append(
                f"| {name} | {fmt('accuracy', 100, 2)} | {fmt('ece', 1, 4)} | {fmt('nll')} | {fmt('brier')} | {fmt('accuracy_at_80', 100, 2)} |"
            )
        lowest = {
            m: min(cell["methods"], key=lambda n: cell["methods"][n][m]["mean"]) for m in ("ece", "nll")
        }
        lqf = cell["methods"]["lqf+var"]
        lines += [
            "",
            f"Lowest ECE: {lowest['ece']}; lowest NLL: {lowest['nll']}. lqf+var at 80% coverage: "
            f"{100 * (lqf['accuracy_at_80']['mean'] - lqf['accuracy']['mean']):+.2f} points over its accuracy at full coverage.",
        ]
        for name, cost in cell["cost"].items():
            lines.append(
                f"Cost ({name}): the variance of {cost['test_images']:,} test images took {cost['predict_with_variance_seconds']['mean']:.1f} s, "
                f"predicting them {cost['predict_seconds']['mean']:.1f} s ({cost['ratio']['mean']:.1f}x)."
            )
        lines.append("")
    return "\n".join(lines)


def summarise_cells(per_seed: dict) -> dict:
    cells = {}
    for key, runs in per_seed.items():
        first = runs[0]
        methods = {}
        for name in first["methods"]:
            methods[name] = {
                m: summarise([r["methods"][name][m] for r in runs])
                for m in ("accuracy", "ece", "nll", "brier", "accuracy_at_80")
                if all(not math.isnan(r["methods"][name][m]) for r in runs)
            }
        cost = {
            name: {
                m: summarise([r["cost"][name][m] for r in runs])
                for m in ("predict_seconds", "predict_with_variance_seconds", "ratio")
            }
            | {"test_images": first["cost"][name]["test_images"]}
            for name in first["cost"]
        }
        cells[key] = {
            "data": first["data"],
            "shots": first["shots"],
            "seeds": [r["seed"] for r in runs],
            "methods": methods,
            "cost": cost,
        }
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["fashion-mnist", "animal-mnist"])
    parser.add_argument("--shots", nargs="+", type=int, default=[25, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    command = "python benchmarks/calibration.py" + (
        ""
        if (args.data, args.shots, args.seeds) == (["fashion-mnist", "animal-mnist"], [25, 100], [0, 1, 2])
        else f" --data {' '.join(args.data)} --shots {' '.join(map(str, args.shots))} --seeds {' '.join(map(str, args.seeds))}"
    )
    per_seed: dict = {}
    results = {"command": command, "hardware": hardware()}
    for shots in args.shots:
        for data in args.data:
            for seed in args.seeds:
                per_seed.setdefault(f"{data}@{shots}", []).append(one(data, shots, seed))
                results["runs"] = per_seed
                results["cells"] = summarise_cells(per_seed)
                with open(os.path.join(RESULTS, "calibration.json"), "w") as handle:
                    json.dump(results, handle, indent=1)
                with open(os.path.join(RESULTS, "calibration.md"), "w") as handle:
                    handle.write(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
