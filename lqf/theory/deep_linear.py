"""Fine-tuning a deep linear network from a pretrained balanced factorisation of ``theta_S``.

The network is ``f(x) = W_L ... W_1 x`` with ``W_1`` (k, d), ``W_j`` (k, k) and ``W_L`` (1, k);
its end-to-end predictor is the vector ``w = (W_L ... W_1)^T`` in R^d. Pretraining is modelled
by the *balanced* factorisation of ``theta_S`` (``W_{j+1}^T W_{j+1} = W_j W_j^T``)::

    W_1 = s^{1/L} u_1 v^T,   W_j = s^{1/L} u_j u_{j-1}^T,   W_L = s^{1/L} u_{L-1}^T

with ``s = ||theta_S||``, ``v = theta_S / s`` and unit vectors ``u_j`` in R^k.

Inductive bias (gradient flow on ``||X w - y||^2 / (2n)``, balanced start). The end-to-end
flow is ``w' = -||w||^{2-2/L} (g + (L-1) w_hat w_hat^T g)`` with ``g = X^T (X w - y) / n``
(Arora, Cohen & Hazan, 2018). With ``Q = I - X^+ X`` (the directions the samples do not
see), ``Q g = 0``, so ``Q w`` only changes along itself: ``Q w(t) = c(t) Q theta_S``, and
``d ln c = (L-1)/(2L) d ln ||w||^2``. If the flow interpolates, its limit is::

    w_inf = X^+ y + c Q theta_S,     c = (||w_inf|| / ||theta_S||)^{(L-1)/L},
    ||w_inf||^2 = ||X^+ y||^2 + c^2 ||Q theta_S||^2

a scalar equation with one positive root. ``L = 1`` gives ``c = 1`` (the linear closed form);
as ``L`` grows ``c -> ||X^+ y|| / ||P theta_S||``: the unseen part of ``theta_S`` is rescaled to
the size the samples ask for, so only the *direction* of ``theta_S`` matters.

Frozen first layers (``W_1 ... W_m`` fixed, ``m >= 1``): ``w`` stays on the line through
``theta_S``; gradient descent can at best reach ``a* theta_S`` with
``a* = <X theta_S, y> / ||X theta_S||^2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lqf.errors import LqfError
from lqf.theory._arrays import as_f64, check_problem


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int | np.integer) or depth < 1:
        raise LqfError(f"depth must be a positive integer, got {depth!r}")


def balanced_factorization(theta_S: Any, depth: int, width: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Balanced rank-one factorisation ``[W_1 (k, d), W_2 (k, k), ..., W_L (1, k)]`` of ``theta_S``.

    ``depth = 1`` gives ``[theta_S^T]`` (1, d). The hidden unit vectors ``u_j`` are random
    (seeded). The product ``W_L ... W_1`` equals ``theta_S^T`` up to rounding.

    >>> ws = balanced_factorization(np.array([3.0, 4.0]), depth=3, width=2)
    >>> bool(np.allclose(end_to_end(ws), [3.0, 4.0]))
    True
    """
    _check_depth(depth)
    ts = as_f64(theta_S, "theta_S", 1)
    s = float(np.linalg.norm(ts))
    if s == 0:
        raise LqfError("theta_S is zero; a balanced factorisation of zero has no direction")
    if depth == 1:
        return [ts[None, :].copy()]
    if width < 1:
        raise LqfError(f"width must be >= 1, got {width}")
    rng = np.random.default_rng(seed)
    us = [u / np.linalg.norm(u) for u in rng.standard_normal((depth - 1, width))]
    r = s ** (1.0 / depth)
    ws = [r * np.outer(us[0], ts / s)]
    ws += [r * np.outer(us[j], us[j - 1]) for j in range(1, depth - 1)]
    ws.append(r * us[-1][None, :])
    return ws


def end_to_end(weights: list[np.ndarray]) -> np.ndarray:
    """``(W_L ... W_1)^T`` as a (d,) vector."""
    prod = weights[0]
    for w in weights[1:]:
        prod = w @ prod
    return prod[0].copy()


def balance_gap(weights: list[np.ndarray]) -> float:
    """``max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F`` (0 for a balanced factorisation)."""
    gaps = [np.linalg.norm(b.T @ b - a @ a.T) for a, b in zip(weights[:-1], weights[1:], strict=True)]
    return float(max(gaps, default=0.0))


@dataclass
class DeepGDResult:
    """Outcome of :func:`train_deep_linear`: weights, end-to-end ``w`` (d,), steps, final loss."""

    weights: list[np.ndarray]
    w: np.ndarray
    steps: int
    loss: float
    converged: bool


def train_deep_linear(
    X: Any,
    y: Any,
    weights: list[np.ndarray],
    *,
    lr: float | None = None,
    frozen: int = 0,
    tol: float = 1e-12,
    gtol: float = 1e-9,
    max_steps: int = 100_000,
) -> DeepGDResult:
    """Full-batch gradient descent on ``||X W_1^T ... W_L^T - y||^2 / (2n)`` over the factors.

    ``frozen = m`` keeps ``W_1 ... W_m`` fixed. With ``G = (X w - y)^T X / n`` (1, d), the
    gradient of factor ``j`` is ``(W_L ... W_{j+1})^T G (W_{j-1} ... W_1)^T``. The default
    step is ``0.5 / (L lambda_max(X^T X / n) max(||w_0||, ||X^+ y||)^{2 - 2/L})``, the
    inverse of the end-to-end preconditioner's scale. Stops when the loss is below
    ``tol * ||y||^2 / n`` (interpolation), when the trainable factors' gradient norm falls
    below ``gtol`` times its first value (a minimum of a restricted problem, e.g. with
    frozen layers), or after ``max_steps``.
    """
    Xa, ya = check_problem(X, y)
    n = Xa.shape[0]
    depth = len(weights)
    if not 0 <= frozen < depth:
        raise LqfError(f"frozen={frozen} must be in [0, {depth - 1}] for depth {depth}")
    ws = [np.array(w, dtype=np.float64) for w in weights]
    if ws[0].shape[1] != Xa.shape[1]:
        raise LqfError(f"W_1 has {ws[0].shape[1]} columns but X has {Xa.shape[1]}; they must match")
    w = end_to_end(ws)
    if lr is None:
        top = np.linalg.norm(Xa, 2) ** 2 / n
        size = max(np.linalg.norm(w), np.linalg.norm(np.linalg.lstsq(Xa, ya, rcond=None)[0]), 1e-12)
        lr = 0.5 / (depth * top * size ** (2.0 - 2.0 / depth))
    target = tol * max(float(ya @ ya) / n, 1e-300)
    loss = np.inf
    first = 0.0
    for step in range(max_steps + 1):
        resid = Xa @ w - ya
        loss = float(resid @ resid) / (2 * n)
        if loss <= target or step == max_steps:
            break
        G = (resid @ Xa / n)[None, :]
        # prefix[j] = W_{j} ... W_1 (prefix[0] = I_d); suffix[j] = W_L ... W_{j+1}
        prefix = [np.eye(Xa.shape[1])]
        for wj in ws:
            prefix.append(wj @ prefix[-1])
        suffix = [np.eye(1)]
        for wj in reversed(ws):
            suffix.append(suffix[-1] @ wj)
        suffix.reverse()  # suffix[j] = W_L ... W_{j+1}, index j = 0..L
        grads = [suffix[j + 1].T @ G @ prefix[j].T for j in range(depth)]
        gnorm = np.sqrt(sum(float(np.sum(grads[j] ** 2)) for j in range(frozen, depth)))
        first = gnorm if step == 0 else first
        if gnorm <= gtol * first:
            break
        for j in range(frozen, depth):
            ws[j] -= lr * grads[j]
        w = end_to_end(ws)
    return DeepGDResult(ws, w, step, loss, loss <= target or (step < max_steps and frozen > 0))


def flow_limit(X: Any, y: Any, theta_S: Any, depth: int) -> np.ndarray:
    """Limit of gradient flow from the balanced factorisation of ``theta_S``: ``X^+ y + c Q theta_S``.

    ``c > 0`` is the root of ``c = ((||X^+ y||^2 + c^2 ||Q theta_S||^2) / ||theta_S||^2)^{(L-1)/(2L)}``
    (see the module docstring); ``X`` (n, d), ``y`` (n,), result (d,).
    """
    _check_depth(depth)
    Xa, ya, ts = check_problem(X, y, theta_S)
    seen = np.linalg.lstsq(Xa, ya, rcond=None)[0]  # X^+ y
    unseen = ts - np.linalg.lstsq(Xa, Xa @ ts, rcond=None)[0]  # Q theta_S
    return seen + depth_scale(float(seen @ seen), float(unseen @ unseen), float(ts @ ts), depth) * unseen


def depth_scale(seen_sq: float, unseen_sq: float, source_sq: float, depth: int) -> float:
    """The positive root ``c`` of ``N c^q - B c^2 = A`` with ``q = 2L/(L-1)``.

    ``A = ||X^+ y||^2``, ``B = ||Q theta_S||^2``, ``N = ||theta_S||^2``; ``c = 1`` for ``L = 1``.
    """
    if depth == 1:
        return 1.0
    A, B, N = seen_sq, unseen_sq, source_sq
    q = 2.0 * depth / (depth - 1)
    phi = lambda c: N * c**q - B * c**2 - A
    lo = (2.0 * B / (q * N)) ** (1.0 / (q - 2.0)) if B > 0 else 0.0  # minimiser of phi
    hi = max(1.0, 2.0 * lo)
    while phi(hi) < 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if phi(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def frozen_limit(X: Any, y: Any, theta_S: Any) -> np.ndarray:
    """Best predictor reachable with the first layer(s) frozen: ``a* theta_S``, (d,)."""
    Xa, ya, ts = check_problem(X, y, theta_S)
    z = Xa @ ts
    if not np.any(z):
        return np.zeros_like(ts)
    return float(z @ ya / (z @ z)) * ts
