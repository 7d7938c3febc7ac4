# ruff: noqa: E501
"""Exact explanations on the real model: leave-one-out against retraining, forgetting, mislabels.

``efficientnet_lite0`` (ImageNet weights), 64 px, 20 validation images per class, 2,000 test
images; ``lqf fit`` defaults for ``lqf`` and ``linear-probe``, in this process (``lqf.runs.fit``).

Parts (``--parts``):

* ``loo``: fashion-mnist, 25 images per class, seed 0. For 20 training images (seeded) the
  leave-one-out prediction of :class:`~lqf.explain.Explainer` against the model retrained from
  scratch without that image on the same problem (same linearization point and penalty: a fresh
  kernel and Cholesky solve on the other 249 images; for the probe, a fresh ridge fit); the
  largest difference relative to the largest output, and the time of each.
* ``forget``: the same LQF run; forgetting 1%, 5% and 10% of its training images (seeded) by
  the closed form against retraining the same problem without them (its factors, kernel and
  solve) and against re-running ``lqf fit`` (LQF, and fine-tuning with the 25-shot recipe of
  ``benchmarks/baseline.py``) on the remaining images: test outputs and times.
* ``mislabels``: 10% of the training labels flipped (seeded, each to a uniformly drawn other
  class) on fashion-mnist and animal-mnist at ``--shots``; AUROC and precision at the number
  flipped of: the leave-one-out mislabel score of the LQF run and of the probe run; cleanlab's
  ``find_label_issues`` ranking and ``get_label_quality_scores`` fed 5-fold cross-validated
  fine-tuning probabilities; the fine-tuned network's own training loss. Times of each.

Usage::

    python benchmarks/explain.py [--parts loo forget mislabels] [--seeds 0 1 2] [--shots 25]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
import torch  # noqa: E402
from common import hardware, summarise  # noqa: E402
from torch import nn  # noqa: E402

from lqf.config import FitConfig  # noqa: E402
from lqf.data import load_data  # noqa: E402
from lqf.data.imageset import DataSplits, ImageSet  # noqa: E402
from lqf.explain import Explainer  # noqa: E402
from lqf.explain.ridge import DualRidge, ProbeRidge  # noqa: E402
from lqf.linearization.factors import JacobianFactors  # noqa: E402
from lqf.methods import get_method  # noqa: E402
from lqf.runs.fit import fit  # noqa: E402
from lqf.training.evaluate import apply, predict_logits  # noqa: E402

#: the fine-tuning recipe that benchmarks/baseline.py chose on validation at 25 shots
FINETUNE_25 = {"lr": 1e-3, "bn": "train", "head_lr_scale": 1.0}
FINETUNE_EPOCHS, FINETUNE_BATCH = 30, 32


def _config(data: str, shots: int, seed: int, method: str, **kw) -> FitConfig:
    return FitConfig(
        model="efficientnet_lite0",
        data=data,
        method=method,
        shots=shots,
        seed=seed,
        val_per_class=20,
        max_test=2000,
        **kw,
    )


def _data(data: str, shots: int, seed: int) -> DataSplits:
    return load_data(data, image_size=64, shots=shots, val_per_class=20, seed=seed, max_test=2000)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _fit(config: FitConfig, data: DataSplits, **options):
    method = get_method(config.method)
    start = time.perf_counter()
    result = fit(config, method.Options(**options), data=data, quiet=True)
    return result, time.perf_counter() - start


# ------------------------------------------------------------------------------------------- loo
def part_loo() -> dict:
    data = _data("fashion-mnist", 25, 0)
    out: dict = {"data": "fashion-mnist", "shots": 25, "seed": 0, "n_train": len(data.train)}
    picks = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:20].tolist()
    for method in ("lqf", "linear-probe"):
        result, fit_s = _fit(_config("fashion-mnist", 25, 0, method), data)
        start = time.perf_counter()
        ex = Explainer(
            result.model,
            data.train,
            method=method,
            options=get_method(method).Options(),
            metrics=result.metrics,
        )
        loo = ex.loo_predictions()
        explain_s = time.perf_counter() - start
        worst, retrain_s = 0.0, []
        if method == "lqf":
            z = apply(ex.model.features_in, data.train, batch_size=256)
        else:
            phi = apply(ex.model.embed, data.train, batch_size=256).double()
        for i in picks:
            keep = torch.ones(len(data.train), dtype=torch.bool)
            keep[i] = False
            start = time.perf_counter()
            if method == "lqf":
                fresh = DualRidge(JacobianFactors(ex.model.linear, z[keep]), ex.targets[keep], ex.view.mu)
                delta = fresh.delta()
                one = JacobianFactors(ex.model.linear, z[i : i + 1])
                pred = (one.outputs.double() + one.jvp([d.to(one.dtype) for d in delta]).double())[0]
            else:
                fresh = ProbeRidge(phi[keep], ex.targets[keep], ex.view.lam)
                pred = torch.cat([phi[i], torch.ones(1, dtype=torch.float64)]) @ fresh.weights
            retrain_s.append(time.perf_counter() - start)
            worst = max(worst, _rel(loo[i], pred.cpu()))
        out[method] = {
            "largest_difference": worst,
            "fit_seconds": fit_s,
            "explain_seconds": explain_s,
            "retrain_seconds": summarise(retrain_s),
            "loo_accuracy": float((loo.argmax(1) == data.train.labels).double().mean()),
            "val_accuracy": result.metrics["val_accuracy"],
            "consistency": ex.consistency,
        }
        print(method, out[method], flush=True)
    return out


# ---------------------------------------------------------------------------------------- forget
def part_forget() -> dict:
    data = _data("fashion-mnist", 25, 0)
    n = len(data.train)
    config = _config("fashion-mnist", 25, 0, "lqf")
    result, fit_s = _fit(config, data)
    ex = Explainer(
        result.model, data.train, method="lqf", options=get_method("lqf").Options(), metrics=result.metrics
    )
    test_z = apply(ex.model.features_in, data.test, batch_size=256)
    test = JacobianFactors(ex.model.linear, test_z)
    z = apply(ex.model.features_in, data.train, batch_size=256)
    out: dict = {"n_train": n, "lqf_fit_seconds": fit_s, "rows": []}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist()
    for share in (0.01, 0.05, 0.10):
        k = max(1, round(share * n))
        removed = sorted(order[:k])
        start = time.perf_counter()
        model = ex.forget(removed)
        forget_s = time.perf_counter() - start
        keep = torch.ones(n, dtype=torch.bool)
        keep[removed] = False
        start = time.perf_counter()
        fresh = DualRidge(JacobianFactors(ex.model.linear, z[keep]), ex.targets[keep], ex.view.mu)
        delta = fresh.delta()
        retrain_s = time.perf_counter() - start
        want = test.outputs.double() + test.jvp([d.to(test.dtype) for d in delta]).double()
        got = test.outputs.double() + test.jvp([d.detach() for d in model.linear.delta]).double()
        reduced = DataSplits(data.name, data.train.subset(keep), data.val, data.test, data.classes)
        _, refit_s = _fit(config, reduced)
        ft_config = _config(
            "fashion-mnist", 25, 0, "finetune", epochs=FINETUNE_EPOCHS, batch_size=FINETUNE_BATCH
        )
        _, finetune_s = _fit(ft_config, reduced, **FINETUNE_25)
        row = {
            "share": share,
            "removed": k,
            "max_test_output_difference": _rel(got, want),
            "forget_seconds": forget_s,
            "retrain_same_problem_seconds": retrain_s,
            "lqf_fit_seconds": refit_s,
            "finetune_seconds": finetune_s,
        }
        row["speedup_vs_lqf_fit"] = refit_s / forget_s
        row["speedup_vs_same_problem"] = retrain_s / forget_s
        row["speedup_vs_finetune"] = finetune_s / forget_s
        out["rows"].append(row)
        print(row, flush=True)
    return out


# ------------------------------------------------------------------------------------- mislabels
def flip(data: DataSplits, share: float, seed: int) -> tuple[DataSplits, torch.Tensor]:
    """``data`` with ``share`` of its training labels moved to a uniformly drawn other class."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n, c = len(data.train), len(data.classes)
    chosen = torch.randperm(n, generator=g)[: round(share * n)]
    labels = data.train.labels.clone()
    labels[chosen] = (labels[chosen] + torch.randint(1, c, (len(chosen),), generator=g)) % c
    train = ImageSet(
        images=data.train.images, labels=labels, classes=data.train.classes, index=data.train.index
    )
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[chosen] = True
    return DataSplits(data.name, train, data.val, data.test, data.classes), flipped


def _scores(flipped: torch.Tensor, score: torch.Tensor) -> dict:
    from sklearn.metrics import roc_auc_score

    k = int(flipped.sum())
    top = torch.argsort(score, descending=True)[:k]
    return {
        "auroc": float(roc_auc_score(flipped.numpy(), score.numpy())),
        "precision_at_k": float(flipped[top].double().mean()),
    }


def part_mislabels(seeds: list[int], shots: list[int]) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out: dict = {"rows": []}
    for name in ("fashion-mnist", "animal-mnist"):
        for k in shots:
            for seed in seeds:
                data, flipped = flip(_data(name, k, seed), 0.10, seed)
                row = {
                    "data": name,
                    "shots": k,
                    "seed": seed,
                    "flipped": int(flipped.sum()),
                    "n_train": len(data.train),
                }
                for method in ("lqf", "linear-probe"):
                    result, fit_s = _fit(_config(name, k, seed, method), data)
                    start = time.perf_counter()
                    ex = Explainer(
                        result.model,
                        data.train,
                        method=method,
                        options=get_method(method).Options(),
                        metrics=result.metrics,
                    )
                    score = ex.mislabel_scores()
                    row[method] = {
                        **_scores(flipped, score),
                        "fit_seconds": fit_s,
                        "score_seconds": time.perf_counter() - start,
                    }
                # fine-tuning: its own training loss, and cleanlab on 5-fold cross-validated probabilities
                ft = dict(epochs=FINETUNE_EPOCHS, batch_size=FINETUNE_BATCH)
                result, ft_s = _fit(_config(name, k, seed, "finetune", **ft), data, **FINETUNE_25)
                logits = predict_logits(result.model, data.train, batch_size=256)
                loss = nn.functional.cross_entropy(logits, data.train.labels, reduction="none")
                row["finetune_loss"] = {**_scores(flipped, loss), "fit_seconds": ft_s}
                folds = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed)) % 5
                probs = torch.zeros(len(data.train), len(data.classes), dtype=torch.float64)
                cv_s = 0.0
                for f in range(5):
                    train = data.train.subset(folds != f)
                    held = data.train.subset(folds == f)
                    part = DataSplits(data.name, train, data.val, data.test, data.classes)
                    res, s = _fit(_config(name, k, seed, "finetune", **ft), part, **FINETUNE_25)
                    cv_s += s
                    probs[folds == f] = torch.softmax(
                        predict_logits(res.model, held, batch_size=256).double(), 1
                    )
                quality = torch.as_tensor(get_label_quality_scores(data.train.labels.numpy(), probs.numpy()))
                row["cleanlab_quality"] = {**_scores(flipped, -quality), "fit_seconds": cv_s}
                ranked = find_label_issues(
                    data.train.labels.numpy(), probs.numpy(), return_indices_ranked_by="self_confidence"
                )
                issue = torch.zeros(len(data.train), dtype=torch.float64)
                issue[torch.as_tensor(ranked, dtype=torch.long)] = torch.linspace(
                    2, 1, len(ranked), dtype=torch.float64
                )
                issue += -quality * 1e-6  # images cleanlab does not flag, ordered by its quality score
                row["cleanlab_issues"] = {
                    **_scores(flipped, issue),
                    "flagged": len(ranked),
                    "fit_seconds": cv_s,
                }
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
    return out


# ---------------------------------------------------------------------------------------- report
def report(results: dict) -> str:
    hw = results["hardware"]
    lines = [
        "# Exact explanations on the real model",
        "",
        "Commands: "
        + "; ".join(f"{k}: `{v}`" for k, v in results["commands"].items())
        + f". Hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} on the CPU. "
        "efficientnet_lite0, 64 px, 20 validation images per class, `lqf fit` defaults.",
        "",
    ]
    if "loo" in results:
        r = results["loo"]
        lines += [
            f"## Leave-one-out against retraining ({r['data']}, {r['shots']} images per class, seed 0, 20 images)",
            "",
            "| method | largest difference (relative to the largest output) | explain s (all images) | one retraining s | "
            "leave-one-out accuracy | validation accuracy |",
            "|---|---|---|---|---|---|",
        ]
        for m in ("lqf", "linear-probe"):
            v = r[m]
            lines.append(
                f"| {m} | {v['largest_difference']:.1e} | {v['explain_seconds']:.1f} | {v['retrain_seconds']['mean']:.2f} "
                f"| {100 * v['loo_accuracy']:.1f} | {100 * v['val_accuracy']:.1f} |"
            )
        lines += [
            "",
            "Retraining: the same problem solved from scratch without the image (same linearization point, "
            "with the probe head fitted on all images, same penalty). The LQF run's leave-one-out keeps that head, "
            "so it is optimistic about an image's own label (see docs/explain.md).",
            "",
        ]
    if "forget" in results:
        r = results["forget"]
        lines += [
            f"## Forgetting ({r['n_train']} training images, LQF run)",
            "",
            "| share | images | test outputs vs retraining | forget s | same problem s | `lqf fit` s | fine-tune s "
            "| x vs same problem | x vs lqf fit | x vs fine-tune |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in r["rows"]:
            lines.append(
                f"| {100 * v['share']:.0f}% | {v['removed']} | {v['max_test_output_difference']:.1e} | {v['forget_seconds']:.3f} "
                f"| {v['retrain_same_problem_seconds']:.1f} | {v['lqf_fit_seconds']:.1f} | {v['finetune_seconds']:.1f} "
                f"| {v['speedup_vs_same_problem']:.0f} | {v['speedup_vs_lqf_fit']:.0f} | {v['speedup_vs_finetune']:.0f} |"
            )
        lines += [
            "",
            "Forget s: the closed form on the loaded explainer (its factors and G^-1 already built, as in "
            "`Explainer.forget`); same problem: factors, kernel and solve on the remaining images; `lqf fit`: "
            "the whole LQF run (head refit, ridge chosen again) on the remaining images; fine-tune: 30 epochs.",
            "",
        ]
    if "mislabels" in results:
        rows = results["mislabels"]["rows"]
        methods = ("lqf", "linear-probe", "cleanlab_quality", "cleanlab_issues", "finetune_loss")
        lines += [
            "## Mislabel detection (10% of the training labels flipped)",
            "",
            "AUROC / precision at the number flipped, per seed; mean AUROC last.",
            "",
            "| data | shots | seed | " + " | ".join(methods) + " |",
            "|---|---|---|" + "---|" * len(methods),
        ]
        for v in rows:
            cells = [f"{v[m]['auroc']:.3f} / {v[m]['precision_at_k']:.2f}" for m in methods]
            lines.append(f"| {v['data']} | {v['shots']} | {v['seed']} | " + " | ".join(cells) + " |")
        for name in sorted({v["data"] for v in rows}):
            for k in sorted({v["shots"] for v in rows}):
                sel = [v for v in rows if v["data"] == name and v["shots"] == k]
                if sel:
                    means = [sum(v[m]["auroc"] for v in sel) / len(sel) for m in methods]
                    lines.append(f"| {name} | {k} | mean | " + " | ".join(f"{a:.3f}" for a in means) + " |")
        secs = {m: sum(v[m]["fit_seconds"] for v in rows) / len(rows) for m in methods}
        lines += [
            "",
            "Mean seconds per setting to get each ranking (training included): "
            + ", ".join(f"{m} {s:.0f}" for m, s in secs.items())
            + "; lqf and linear-probe add the explainer's "
            + ", ".join(
                f"{m} {sum(v[m]['score_seconds'] for v in rows) / len(rows):.1f} s"
                for m in ("lqf", "linear-probe")
            )
            + ". cleanlab_* share the five cross-validation fine-tunings; finetune_loss is one fine-tuning.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["loo", "forget", "mislabels"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", nargs="+", type=int, default=[25])
    parser.add_argument("--report", action="store_true", help="rewrite explain.md from explain.json")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    path = os.path.join(RESULTS, "explain.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    if not args.report:
        results["hardware"] = hardware()
        command = "python benchmarks/explain.py " + " ".join(sys.argv[1:])
        results.pop("command", None)
        parts = {
            "loo": part_loo,
            "forget": part_forget,
            "mislabels": lambda: part_mislabels(args.seeds, args.shots),
        }
        for part in args.parts:
            print(f"== {part}", flush=True)
            new = parts[part]()
            if part == "mislabels" and "mislabels" in results:  # add to the settings already measured
                done = {(r["data"], r["shots"], r["seed"]) for r in new["rows"]}
                kept = [
                    r for r in results["mislabels"]["rows"] if (r["data"], r["shots"], r["seed"]) not in done
                ]
                new["rows"] = kept + new["rows"]
            results[part] = new
            results.setdefault("commands", {})[part] = command  # parts may come from several invocations
            with open(path, "w") as handle:
                json.dump(results, handle, indent=1)
    with open(os.path.join(RESULTS, "explain.md"), "w") as handle:
        handle.write(report(results))


if __name__ == "__main__":
    main()
