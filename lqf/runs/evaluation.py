"""A model's test evaluation as every run reports it: metrics, confusion matrix, reliability diagram.

:func:`test_report` scores a model on a test split and returns the flat ``test_*`` entries
of ``metrics.json`` (:mod:`lqf.training.metrics`: accuracy, balanced and per-class accuracy,
NLL, Brier score, ECE, accuracy at 80% coverage, confusion counts); :func:`write_plots` puts
``confusion.png`` and ``reliability.png`` into a run directory.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from lqf.training.evaluate import predict_logits
from lqf.training.metrics import classification_metrics, reliability

CONFUSION = "confusion.png"
RELIABILITY = "reliability.png"


def temperature_of(model: nn.Module, val, *, batch_size: int = 256, device: str = "cpu") -> float:
    """The run's temperature: :func:`~lqf.training.metrics.fit_temperature` on its validation images."""
    from lqf.training.metrics import fit_temperature

    if len(val) == 0:
        return 1.0
    return fit_temperature(predict_logits(model, val, batch_size=batch_size, device=device), val.labels)


def test_report(
    model: nn.Module,
    images,
    classes: list[str],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    quiet: bool = True,
    temperature: float = 1.0,
) -> tuple[dict[str, Any], Any]:
    """``(metrics, logits)``: the ``test_*`` entries for ``images`` (an ``ImageSet``) and the scores;
    probabilities at the run's ``temperature`` (:func:`~lqf.training.metrics.fit_temperature`)."""
    logits = predict_logits(model, images, batch_size=batch_size, device=device, quiet=quiet)
    m = classification_metrics(logits, images.labels, classes, temperature=temperature)
    loss = float(nn.functional.cross_entropy(logits, images.labels)) if len(images) else float("nan")
    out = {"test_accuracy": m["accuracy"], "test_loss": loss}
    for key in (
        "balanced_accuracy",
        "per_class_accuracy",
        "nll",
        "brier",
        "ece",
        "accuracy_at_80",
        "confusion",
        "nll_raw",
        "brier_raw",
        "ece_raw",
    ):
        if key in m:
            out[f"test_{key}"] = m[key]
    return out, logits


def write_plots(
    folder: str, metrics: dict[str, Any], logits, labels, classes: list[str], title: str
) -> list[str]:
    """``confusion.png`` and ``reliability.png`` in ``folder``; returns the names written."""
    from lqf.reports.plots import plot_confusion, plot_reliability
    from lqf.training.metrics import probabilities

    if "test_confusion" not in metrics:
        return []
    plot_confusion(metrics["test_confusion"], classes, os.path.join(folder, CONFUSION), title=title)
    bins = reliability(probabilities(logits, metrics.get("temperature") or 1.0), labels)
    plot_reliability(bins, os.path.join(folder, RELIABILITY), title=title, ece=metrics.get("test_ece"))
    return [CONFUSION, RELIABILITY]


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The summary's lines on the test metrics beyond accuracy (empty for an old run)."""
    if m.get("test_balanced_accuracy") is None:
        return []
    lines = [
        f"  balanced acc  {m['test_balanced_accuracy']:.4f}    accuracy at 80% coverage "
        f"{m['test_accuracy_at_80']:.4f}",
        f"  calibration   ECE {m['test_ece']:.4f}    NLL {m['test_nll']:.4f}    Brier {m['test_brier']:.4f}"
        + (
            f"    (temperature {m['temperature']:.3g} chosen on validation; at 1: "
            f"ECE {m['test_ece_raw']:.4f}, NLL {m['test_nll_raw']:.4f})"
            if m.get("temperature") not in (None, 1.0) and "test_ece_raw" in m
            else ""
        ),
    ]
    per_class = {k: v for k, v in (m.get("test_per_class_accuracy") or {}).items() if v is not None}
    if per_class:
        worst = min(per_class, key=per_class.get)
        best = max(per_class, key=per_class.get)
        lines.append(
            f"  per class     lowest {worst} {per_class[worst]:.4f}, highest {best} {per_class[best]:.4f}"
        )
    return lines
