"""Matrix-free preconditioned conjugate gradient for the LQF normal equations.

Solves ``H dw = b`` with ``H v`` from one jvp and one vjp per mini-batch
(never forming ``H``), optionally preconditioned by an approximation
``P ~ H`` applied as ``P^{-1}`` (e.g. K-FAC). Stops when the relative
residual ``||b - H dw|| / ||b||`` is below ``tol``. No learning rate, no
epoch count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CGResult:
    """The solution and how CG got there."""

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    residuals: list[float] = field(default_factory=list)


def conjugate_gradient(
    hvp: Operator,
    b: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    precondition: Operator | None = None,
    tol: float = 1e-4,
    max_iter: int = 500,
    callback: Callable[[int, torch.Tensor, float], None] | None = None,
) -> CGResult:
    """Preconditioned CG for a symmetric positive definite ``H`` given as ``hvp``.

    Args:
        hvp: ``v -> H v`` on flat vectors.
        b: right-hand side ``(P,)``.
        x0: starting point (default zeros).
        precondition: ``r -> P^{-1} r`` (default identity).
        tol: stop when ``||b - H x|| <= tol ||b||``.
        max_iter: at most this many ``hvp`` calls.
        callback: called as ``callback(iteration, x, relative_residual)``.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - hvp(x) if x0 is not None else b.clone()
    bnorm = float(b.norm()) or 1.0
    z = precondition(r) if precondition else r
    p = z.clone()
    rz = torch.dot(r, z)
    history = [float(r.norm()) / bnorm]
    it = 0
    while history[-1] > tol and it < max_iter:
        hp = hvp(p)
        alpha = rz / torch.dot(p, hp)
        x += alpha * p
        r -= alpha * hp
        it += 1
        history.append(float(r.norm()) / bnorm)
        if callback is not None:
            callback(it, x, history[-1])
        if history[-1] <= tol:
            break
        z = precondition(r) if precondition else r
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return CGResult(x=x, iterations=it, residual=history[-1], converged=history[-1] <= tol, residuals=history)
