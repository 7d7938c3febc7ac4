"""Classification metrics beyond top-1 accuracy, from scores and labels.

Top-1 accuracy alone hides two things a user needs: how the model does per class (on an
imbalanced target a model can score below the majority-class rate and still be useful, or
above it and useless for the rare classes) and how far its confidence can be trusted. Every
run reports, on its test split:

* ``accuracy``; ``balanced_accuracy``, the mean of the per-class recalls; ``per_class_accuracy``;
* ``nll``: mean ``-log p_y``; ``brier``: mean ``sum_c (p_c - [c = y])^2``;
* ``ece``: expected calibration error, 15 equal-width bins of the top probability,
  ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``;
* ``accuracy_at_80``: accuracy on the 80% of images the model is most confident about (the least
  confident 20% rejected), and the ``coverage`` it was computed at;
* ``confusion``: counts ``(true, predicted)``.

Probabilities are ``softmax(scores / T)``: ``T`` is the run's temperature, chosen on its
validation images by their NLL (:func:`fit_temperature`; 1 without validation images). It
changes no prediction, only how sure each one is said to be; ``nll_raw``, ``brier_raw`` and
``ece_raw`` are the same metrics at ``T = 1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ECE_BINS = 15
COVERAGE = 0.8
#: the temperatures :func:`fit_temperature` chooses from: 10^(-3) to 10^2, 16 per decade
TEMPERATURES = tuple(10 ** (k / 16) for k in range(-48, 33))


def probabilities(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(scores / T)`` of ``(N, C)`` scores, in float64."""
    return torch.softmax(scores.double() / float(temperature), dim=1)


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` of ``TEMPERATURES`` with the lowest NLL of ``softmax(scores / T)``
    on ``labels`` (validation images; ties to the value closest to 1); 1 without images."""
    if len(labels) == 0:
        return 1.0
    labels = labels.long()
    best = None
    for t in TEMPERATURES:
        p = probabilities(scores, t)
        value = float(-torch.log(p[torch.arange(len(labels)), labels].clamp_min(1e-300)).mean())
        key = (round(value, 12), abs(math.log(t)))
        if best is None or key < best[0]:
            best = (key, t)
    return best[1]


def confusion(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    flat = labels.long() * classes + predicted.long()
    return torch.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of the top probability over ``bins`` equal-width bins of ``[0, 1]``."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.clamp(torch.bucketize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += float(mask.double().mean()) * abs(float(correct[mask].mean()) - float(conf[mask].mean()))
    return total


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per bin of the top probability: its share of images, mean confidence and accuracy."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.clamp(torch.bucketize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else math.nan,
                "accuracy": float(correct[mask].mean()) if n else math.nan,
            }
        )
    return out


def accuracy_at_coverage(
    probs: torch.Tensor,
    labels: torch.Tensor,
    coverage: float = COVERAGE,
    confidence: torch.Tensor | None = None,
) -> float:
    """Accuracy on the ``coverage`` fraction of images with the highest confidence (top probability
    unless ``confidence`` is given; ties broken by position, so the count is exact)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    conf = probs.max(1).values if confidence is None else confidence
    keep = max(1, round(coverage * len(labels)))
    order = torch.argsort(conf, descending=True, stable=True)[:keep]
    return float((probs[order].argmax(1) == labels[order]).double().mean())


def classification_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    *,
    probs: torch.Tensor | None = None,
    coverage: float = COVERAGE,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Every metric of the module docstring for ``(N, C)`` scores and ``(N,)`` labels
    (probabilities ``softmax(scores / temperature)`` unless ``probs`` is given)."""
    if len(labels) == 0:
        return {"accuracy": math.nan}
    p = probabilities(scores, temperature) if probs is None else probs.double()
    labels = labels.long()
    pred = scores.argmax(1)
    c = len(classes)
    table = confusion(pred, labels, c)
    present = table.sum(1) > 0
    recall = torch.where(present, table.diagonal().double() / table.sum(1).clamp_min(1), torch.nan)
    onehot = torch.nn.functional.one_hot(labels, c).double()
    nll = float(-torch.log(p[torch.arange(len(labels)), labels].clamp_min(1e-300)).mean())
    return {
        "accuracy": float((pred == labels).double().mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "per_class_accuracy": {
            classes[k]: (None if math.isnan(v) else float(v)) for k, v in enumerate(recall.tolist())
        },
        "nll": nll,
        "brier": float((p - onehot).pow(2).sum(1).mean()),
        "ece": expected_calibration_error(p, labels),
        "accuracy_at_80": accuracy_at_coverage(p, labels, coverage),
        "coverage": coverage,
        "confusion": table.tolist(),
        **(_raw(scores, labels, onehot) if probs is None else {}),
        "temperature": float(temperature) if probs is None else None,
    }


def _raw(scores: torch.Tensor, labels: torch.Tensor, onehot: torch.Tensor) -> dict[str, float]:
    """NLL, Brier and ECE of the plain ``softmax(scores)``."""
    p = probabilities(scores)
    return {
        "nll_raw": float(-torch.log(p[torch.arange(len(labels)), labels].clamp_min(1e-300)).mean()),
        "brier_raw": float((p - onehot).pow(2).sum(1).mean()),
        "ece_raw": expected_calibration_error(p, labels),
    }
