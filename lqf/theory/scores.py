"""Two transferability scores from the literature, the baselines of ``lqf theory transfer``.

* **LogME** (You, Liu, Wang and Long, ICML 2021): the maximised log evidence of Bayesian
  linear regression of each one-hot label column on the features, per sample, averaged over
  classes.
* **LEEP** (Nguyen, Hassner, Seeger and Archambeau, ICML 2020): the mean log-likelihood of the
  empirical predictor ``P(y | z) theta_z(x)`` built from the source classifier's (ImageNet)
  output distribution ``theta(x)``.

Shapes: ``n`` samples, ``C`` target classes, ``D`` features, ``Z`` source classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lqf.errors import LqfError

# --------------------------------------------------------------------------------------- LogME


def log_evidence(features: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> float:
    """``log p(y | F, alpha, beta)`` of ``y = F w + eps``, ``w ~ N(0, I/alpha)``, ``eps ~ N(0, I/beta)``.

    Closed form (``A = alpha I + beta F^T F``, ``m = beta A^{-1} F^T y``)::

        n/2 log beta + D/2 log alpha - n/2 log(2 pi) - beta/2 ||F m - y||^2
            - alpha/2 ||m||^2 - 1/2 log det A

    evaluated through the thin SVD ``F = U diag(s) V^T``. ``features`` ``(n, D)``, ``y`` ``(n,)``.
    """
    f, y = features.double(), y.double()
    n, d = f.shape
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    s2 = s**2
    z = u.T @ y
    denom = alpha + beta * s2
    m2 = float(((beta * s * z / denom) ** 2).sum())
    res2 = float(((alpha * z / denom) ** 2).sum()) + max(float((y @ y) - (z @ z)), 0.0)
    logdet = float(torch.log(denom).sum()) + (d - len(s)) * math.log(alpha)
    return (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * logdet
    )


def maximise_evidence(
    features: torch.Tensor, y: torch.Tensor, max_iter: int = 200, tol: float = 1e-7
) -> tuple[float, float, float]:
    """``(log evidence, alpha, beta)`` at the supremum of the evidence over ``alpha, beta > 0``.

    MacKay's fixed-point iteration from ``alpha = beta = 1``:
    ``gamma = sum_i beta s_i^2 / (alpha + beta s_i^2)`` (effective number of parameters),
    ``alpha <- gamma / ||m||^2``, ``beta <- (n - gamma) / ||F m - y||^2``, until both change by
    less than ``tol`` relative. When ``F`` has rank ``n`` (fewer samples than features, the
    few-shot case) ``y`` is interpolated exactly and the iteration drives ``beta`` to infinity;
    the supremum is then the noise-free limit ``y ~ N(0, F F^T / alpha)``, maximised in closed
    form by ``alpha = n / (y^T (F F^T)^{-1} y)``. The larger of the two values is returned
    (``beta = inf`` for the limit). ``features`` ``(n, D)``, ``y`` ``(n,)``.
    """
    f, y = features.double(), y.double()
    n = f.shape[0]
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    s2 = s**2
    z = u.T @ y
    outside = max(float((y @ y) - (z @ z)), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        denom = alpha + beta * s2
        gamma = min(float((beta * s2 / denom).sum()), n * (1 - 1e-12))
        m2 = float(((beta * s * z / denom) ** 2).sum())
        res2 = max(float(((alpha * z / denom) ** 2).sum()) + outside, 1e-300)
        new_alpha = gamma / max(m2, 1e-300)
        new_beta = (n - gamma) / res2
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done or beta * float(s2.min()) > 1e12 * alpha:  # converged, or in the noise-free limit
            break
    best = (log_evidence(f, y, alpha, beta), alpha, beta)
    if len(s) == n and float(s2.min()) > 1e-12 * float(s2.max()):
        q = float((z**2 / s2).sum())
        a = n / q
        limit = -0.5 * n * math.log(2 * math.pi) - 0.5 * float(torch.log(s2 / a).sum()) - 0.5 * n
        if limit > best[0]:
            best = (limit, a, math.inf)
    return best


def logme(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """LogME: ``(1/C) sum_c max_{alpha, beta} log p(y_c | F) / n`` over one-hot columns ``y_c``.

    ``features`` ``(n, D)`` (used as they are, no centring), ``labels`` ``(n,)``.
    """
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    y = nn.functional.one_hot(labels, c).double()
    n = features.shape[0]
    return sum(maximise_evidence(features, y[:, j])[0] for j in range(c)) / (c * n)


# ---------------------------------------------------------------------------------------- LEEP


def leep(source_probs: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """LEEP of target ``labels`` ``(n,)`` given source-class probabilities ``theta`` ``(n, Z)``.

    ``P(y, z) = (1/n) sum_{i: y_i = y} theta_z(x_i)``, ``P(y | z) = P(y, z) / sum_y' P(y', z)``,
    ``LEEP = (1/n) sum_i log sum_z P(y_i | z) theta_z(x_i)``.
    """
    theta = source_probs.double()
    n = theta.shape[0]
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    joint = nn.functional.one_hot(labels, c).double().T @ theta / n  # (C, Z)
    cond = joint / joint.sum(0, keepdim=True).clamp_min(1e-300)
    eep = (theta * cond[labels]).sum(1)
    return float(torch.log(eep).mean())


def source_probabilities(model_name: str, phi: torch.Tensor) -> torch.Tensor:
    """ImageNet class probabilities ``(n, 1000)`` of a built-in model from its pooled features ``phi``.

    Only the built-in EfficientNet-Lite models ship their ImageNet classifier.
    """
    from lqf.models.efficientnet_lite import VARIANTS, build_timm_lite

    if model_name not in VARIANTS:
        raise LqfError(f"LEEP needs the source classifier; it ships only for {', '.join(VARIANTS)}")
    classifier = build_timm_lite(model_name, pretrained=True, num_classes=1000).get_classifier()
    with torch.no_grad():
        return torch.softmax(classifier(phi.float()).double(), dim=1)
