"""Conjugate gradient for a whole grid of shifted systems ``(A + sigma_i I) x_i = b`` at once.

``A + sigma I`` has the same Krylov space for every ``sigma``, so one sequence of products
``A p`` serves every shift (Jegerlehner, "Krylov space solvers for shifted linear systems",
1996; Frommer, "BiCGStab(l) for families of shifted linear systems", 2003). CG runs on the
smallest shift (the slowest to converge, since its system is the worst conditioned); the
residual of each other shift is collinear with it, ``r_k^sigma = zeta_k^sigma r_k``, and its
iterate follows from scalar recurrences:

    zeta_{k+1} = zeta_k zeta_{k-1} alpha_{k-1}
                 / (alpha_k beta_{k-1} (zeta_{k-1} - zeta_k) + zeta_{k-1} alpha_{k-1} (1 + d alpha_k)),
    alpha_k^sigma = alpha_k zeta_{k+1} / zeta_k,       beta_k^sigma = beta_k (zeta_{k+1} / zeta_k)^2,
    x^sigma += alpha_k^sigma p^sigma,                    p^sigma = zeta_{k+1} r_{k+1} + beta_k^sigma p^sigma,

with ``d = sigma - sigma_min >= 0``. The cost is one product with ``A`` per iteration for the
whole grid, plus two vector updates per shift. A shift stops updating once its residual
``|zeta| ||r||`` is below ``tol ||b||``; the run stops when every shift has (the base one
last), or at ``max_iter``. No preconditioner: it would break the shared Krylov space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ShiftedResult:
    """Solutions and how far each got.

    Attributes:
        shifts: the shifts, in the order given.
        x: one solution per shift.
        residuals: relative residual ``||b - (A + sigma I) x|| / ||b||`` per shift (the
            recurrence's value; :func:`multishift_cg` checks the base one).
        iterations: products with ``A`` when each shift stopped.
        converged: whether each shift reached ``tol``.
        history: the base system's relative residual after each iteration.
    """

    shifts: list[float]
    x: list[torch.Tensor]
    residuals: list[float]
    iterations: list[int]
    converged: list[bool]
    history: list[float] = field(default_factory=list)


def multishift_cg(
    matvec: Operator,
    b: torch.Tensor,
    shifts: Sequence[float],
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    callback: Callable[[int, list[float]], None] | None = None,
) -> ShiftedResult:
    """Solve ``(A + sigma I) x = b`` for every ``sigma`` in ``shifts`` from one Krylov sequence.

    Args:
        matvec: ``v -> A v`` for a symmetric positive semi-definite ``A`` (flat vectors).
        b: right-hand side.
        shifts: ``sigma >= 0``, at least one; ``A + sigma I`` must be positive definite.
        tol: stop a shift at this relative residual.
        max_iter: at most this many products with ``A``.
        callback: called as ``callback(iteration, relative residuals per shift)``.
    """
    shifts = [float(s) for s in shifts]
    if not shifts or min(shifts) < 0:
        raise ValueError(f"shifts must be >= 0 and not empty, got {shifts}")
    base = min(shifts)
    bnorm = float(b.norm())
    n = len(shifts)
    xs = [torch.zeros_like(b) for _ in shifts]
    if bnorm == 0:
        return ShiftedResult(shifts, xs, [0.0] * n, [0] * n, [True] * n, [0.0])
    r = b.clone()
    ps = [b.clone() for _ in shifts]
    ib = shifts.index(base)
    p = ps[ib]  # the base system's direction (its zeta is always 1)
    zeta = [1.0] * n
    zeta_old = [1.0] * n
    alpha_old, beta_old = 1.0, 0.0
    rr = float(r @ r)
    active = [True] * n
    iterations = [0] * n
    rel = [1.0] * n
    history = [1.0]
    it = 0
    while active[ib] and it < max_iter:  # every other shift converges no later than the base
        ap = matvec(p) + base * p
        alpha = rr / float(p @ ap)
        zeta_new = [1.0] * n
        for i, s in enumerate(shifts):
            if not active[i]:
                continue
            d = s - base
            if d == 0:
                zeta_new[i], a_i = 1.0, alpha
            else:
                denom = alpha * beta_old * (zeta_old[i] - zeta[i]) + zeta_old[i] * alpha_old * (1 + d * alpha)
                zeta_new[i] = zeta[i] * zeta_old[i] * alpha_old / denom
                a_i = alpha * zeta_new[i] / zeta[i]
            xs[i].add_(ps[i], alpha=a_i)
        r.add_(ap, alpha=-alpha)
        rr_new = float(r @ r)
        beta = rr_new / rr
        it += 1
        rnorm = rr_new**0.5 / bnorm
        history.append(rnorm)
        for i, s in enumerate(shifts):
            if not active[i]:
                continue
            rel[i] = abs(zeta_new[i]) * rnorm
            iterations[i] = it
            if rel[i] <= tol:
                active[i] = False
                continue
            if s == base:
                p.mul_(beta).add_(r)
            else:
                b_i = beta * (zeta_new[i] / zeta[i]) ** 2
                ps[i].mul_(b_i).add_(r, alpha=zeta_new[i])
        zeta_old, zeta = zeta, [zn if a else z for zn, z, a in zip(zeta_new, zeta, active, strict=True)]
        # a stopped shift keeps its last zeta; only active ones are read again
        alpha_old, beta_old, rr = alpha, beta, rr_new
        if callback is not None:
            callback(it, list(rel))
    converged = [v <= tol for v in rel]
    return ShiftedResult(shifts, xs, rel, iterations, converged, history)
