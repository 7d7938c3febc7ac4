"""The linear probe of a fixed head: fit only its scale and bias on frozen features.

With the matrix ``W`` fixed, the logits ``alpha g + b`` are linear in the
``C + 1`` unknowns ``(alpha, b)``, where ``g = W x/||x||`` ``(N, C)`` are the
cosines of the features with the fixed rows (:meth:`FixedClassifier.project`).

* ``ridge``: least squares on one-hot targets ``Y`` ``(N, C)``,

      min_{alpha, b} ||alpha G + 1 b^T - Y||_F^2 + lam ||G_c||_F^2 alpha^2,

  solved in closed form: ``alpha = <G_c, Y_c>_F / ((1 + lam) ||G_c||_F^2)``,
  ``b = mean(Y) - alpha mean(G)`` (``G_c``, ``Y_c``: column-centred). ``lam``
  is relative to ``||G_c||_F^2``, as the dense probe's is to its Gram matrix.
* ``logistic``: ``min mean_i CE(alpha g_i + b, y_i) + (lam / 2) alpha^2``,
  convex in ``(alpha, b)``, by full-batch L-BFGS.

The penalty is chosen on the validation split like the dense probe's. Only
scale and bias can adapt, so the classes land on whichever fixed rows their
indices give: this probe measures how well frozen features already align with
the fixed directions, which they were never trained to do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lqf.heads.fixed import FixedClassifier


def scale_bias_ridge(
    cosines: torch.Tensor, targets: torch.Tensor, lambdas: list[float]
) -> list[tuple[float, torch.Tensor]]:
    """Closed-form ``(alpha, b (C,))`` per relative penalty ``lam`` (module docstring).

    Args:
        cosines: ``G`` ``(N, C)``.
        targets: ``Y`` ``(N, C)``.
        lambdas: relative penalties on ``alpha^2``.
    """
    g, y = cosines.double(), targets.double()
    gbar, ybar = g.mean(0), y.mean(0)
    gc, yc = g - gbar, y - ybar
    cross, energy = float((gc * yc).sum()), float((gc * gc).sum())
    out = []
    for lam in lambdas:
        alpha = cross / ((1.0 + lam) * energy) if energy > 0 else 0.0
        out.append((alpha, ybar - alpha * gbar))
    return out


def scale_bias_logistic(
    cosines: torch.Tensor, labels: torch.Tensor, lam: float, max_iter: int = 200
) -> tuple[float, torch.Tensor]:
    """``(alpha, b)`` minimising ``mean CE(alpha g + b) + (lam / 2) alpha^2`` by L-BFGS."""
    g = cosines.double()
    alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(g.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [alpha, b],
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(alpha * g + b, labels) + 0.5 * lam * alpha**2
        loss.backward()
        return loss

    opt.step(closure)
    return float(alpha.detach()), b.detach()


def fit_fixed_head(
    head: FixedClassifier,
    train: torch.Tensor,
    train_labels: torch.Tensor,
    val: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    probe: str,
    lambdas: list[float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit ``head.scale`` and ``head.bias`` in place; choose ``lam`` on validation.

    Args:
        head: the fixed head (its matrix is not changed).
        train, val: frozen features ``(N, d)``; ``val`` may be ``None``.
        train_labels, val_labels: class indices ``(N,)``.
        probe: ``"ridge"`` or ``"logistic"``.
        lambdas: candidate penalties (one entry: no selection).

    Returns:
        ``(extra, record)``: results for ``metrics.json`` and the log record.
    """
    from lqf.training.evaluate import accuracy

    with torch.no_grad():
        # the features may sit on the CPU while the head is on a GPU: project there, fit on the CPU
        g_train = head.project(train.to(head.scale)).double().cpu()
        g_val = head.project(val.to(head.scale)).double().cpu() if val is not None else None
    c = head.out_features
    if probe == "ridge":
        targets = nn.functional.one_hot(train_labels, c).double()
        candidates = scale_bias_ridge(g_train, targets, lambdas)
    else:
        candidates = [scale_bias_logistic(g_train, train_labels, lam) for lam in lambdas]
    scores = [accuracy(a * g_val + b, val_labels) if g_val is not None else 0.0 for a, b in candidates]
    # best validation accuracy; ties go to the stronger regularisation
    best = max(range(len(lambdas)), key=lambda i: (scores[i], i))
    alpha, bias = candidates[best]
    with torch.no_grad():
        head.scale.fill_(alpha)
        head.bias.copy_(bias.to(head.bias.dtype))
    extra = {
        "ridge_relative": lambdas[best],
        "lambda_grid": list(lambdas),
        "val_accuracy_grid": scores if g_val is not None else None,
        "head_scale": alpha,
    }
    record = {
        "epoch": 1,
        "val_accuracy": scores[best] if g_val is not None else None,
        "train_accuracy": accuracy(alpha * g_train + bias, train_labels),
    }
    return extra, record
