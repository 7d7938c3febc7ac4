"""Every ridge of the LQF grid by one route, and the choice on validation.

The problem (:mod:`lqf.solvers.problem`) at ridge ``lam``:

    (J^T J / N + lam M) dw = J^T r / N,        r = t - f(x; w0),

with ``lam = rel * trace(J M^-1 J^T) / (N C) / N`` for each relative value ``rel`` of the
grid: the trace is exact, the diagonal of the tangent kernel
(:meth:`~lqf.linearization.factors.JacobianFactors.diagonal`). Two routes solve all of it:

* ``kernel``: the dual. ``K = J M^-1 J^T`` from the factored Jacobian
  (:func:`~lqf.linearization.kernel.tangent_kernel`, float64), then per ridge one Cholesky
  factorization of ``K + N lam I`` and ``alpha = (K + N lam I)^-1 r``, ``dw = M^-1 J^T alpha``
  (one product with the stored factors). Five Cholesky factorizations cost ``5 n^3 / 3`` flops
  against about ``9 n^3`` for the one eigendecomposition that would give every ridge
  (measured at ``n = N C = 10,000`` on 2 cores: 2.7 s each against 75 s). Exact to rounding.
  Under ``torchrun`` each process sums its share of the kernel's blocks (one all-reduce joins
  them) and solves ridges ``rank, rank + W, ...``; the records and the chosen solution are
  broadcast from the processes that computed them.
* ``cg``: the primal, matrix-free. Multi-shift conjugate gradient
  (:func:`~lqf.solvers.multishift.multishift_cg`) solves every ridge from one Krylov
  sequence, so the grid costs the products of its smallest ridge alone; products come from
  the stored factors when they fit in memory, else from jvp/vjp passes over the data. Each
  ridge stops at ``tol`` relative residual; one that does not reach it by ``max_iter`` is
  marked unconverged and is chosen only when no ridge converged (the summary says so).

Validation outputs ``f(x; w0) + J_val dw`` come from the validation images' factors; the
ridge with the best validation accuracy is kept (ties: the stronger ridge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lqf import distributed
from lqf.linearization.factors import JacobianFactors
from lqf.linearization.kernel import tangent_kernel
from lqf.linearization.linear_model import LinearizedModel
from lqf.linearization.streamed import StreamedJacobian
from lqf.solvers.multishift import multishift_cg
from lqf.training.evaluate import accuracy

Say = Callable[[str], None]


@dataclass
class GridResult:
    """What :func:`solve_grid` returns.

    Attributes:
        records: one per ridge (``ridge_relative``, ``val_accuracy``, ``train_accuracy``,
            ``converged``, ``residual``, ``iterations``), in the grid's order.
        chosen: index of the kept ridge in ``records``.
        delta: the kept solution, shaped like ``lin.delta``.
        scale: ``trace(J M^-1 J^T) / (N C) / N`` (``lam = rel * scale``).
        info: route details for ``metrics.json`` (matrix products, factor memory, ...).
    """

    records: list[dict[str, Any]]
    chosen: int
    delta: list[torch.Tensor]
    scale: float
    info: dict[str, Any] = field(default_factory=dict)


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _unflat(v: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, lo = [], 0
    for t in like:
        out.append(v[lo : lo + t.numel()].reshape(t.shape))
        lo += t.numel()
    return out


def _metric_vector(lin: LinearizedModel, metric: Sequence[float] | None) -> torch.Tensor:
    d = lin.delta[0]
    m = [1.0] * len(lin.delta) if metric is None else [float(v) for v in metric]
    return torch.cat(
        [
            torch.full((t.numel(),), v, dtype=d.dtype, device=d.device)
            for t, v in zip(lin.delta, m, strict=True)
        ]
    )


def choose(records: list[dict[str, Any]]) -> int:
    """The kept ridge: the best validation accuracy among the converged ridges (among all of them
    when none converged), ties and a missing validation split going to the stronger ridge."""
    pool = [i for i, r in enumerate(records) if r["converged"]] or list(range(len(records)))

    def key(i: int) -> tuple[float, float]:
        val = records[i]["val_accuracy"]
        return (val if val is not None and not math.isnan(val) else 0.0, records[i]["ridge_relative"])

    return max(pool, key=key)


def solve_grid(
    lin: LinearizedModel,
    train: JacobianFactors | StreamedJacobian,
    targets: torch.Tensor,
    val: JacobianFactors | StreamedJacobian | None,
    val_labels: torch.Tensor | None,
    rel: Sequence[float],
    *,
    route: str,
    metric: Sequence[float] | None = None,
    tol: float = 1e-5,
    max_iter: int = 1000,
    on_kernel: Callable[[float], None] | None = None,
    on_iteration: Callable[[int, list[float]], None] | None = None,
    say: Say = lambda text: None,
) -> GridResult:
    """Solve the LQF problem at ``rel * scale`` for every ``rel`` by ``route`` (``kernel``/``cg``).

    Args:
        lin: the linearized model.
        train: the Jacobian of the training inputs, as factors (or streamed, for ``cg``); its
            ``outputs`` are ``f(x; w0)``.
        targets: ``(N, C)`` regression targets ``t``.
        val, val_labels: factors and labels of the validation inputs (``None``: no validation).
        rel: the relative ridge values.
        route: ``kernel`` (dual, Cholesky per ridge) or ``cg`` (primal multi-shift CG).
        metric: ``M`` as one positive scalar per linearized tensor (default all 1).
        tol, max_iter: ``cg``: relative residual to reach, products with ``J^T J`` at most.
        on_kernel, on_iteration, say: progress (kernel blocks, CG iterations, one-line messages).
    """
    n, c = train.n, train.classes
    residual = (targets.to(train.outputs) - train.outputs).double()
    diag = train.diagonal(metric)
    scale = float(diag.sum()) / (n * c) / n
    minv = 1.0 / _metric_vector(lin, metric)
    info: dict[str, Any] = {"factor_mb": train.nbytes() / 2**20}
    if route == "kernel":
        solutions, info_route = _kernel_route(train, residual, rel, scale, metric, minv, on_kernel, say)
    elif route == "cg":
        solutions, info_route = _cg_route(lin, train, residual, rel, scale, minv, tol, max_iter, on_iteration)
    else:
        raise ValueError(f"route must be kernel or cg, got {route!r}")
    info.update(info_route)
    records: list = []
    labels = targets.argmax(1).cpu()
    for r, solved in zip(rel, solutions, strict=True):
        if solved is None:  # solved by another process
            records.append(None)
            continue
        dw, extra = solved
        v = _unflat(dw.to(lin.delta[0].dtype), lin.delta)
        train_out = train.outputs + train.jvp(v)
        rec = {"ridge_relative": r, "train_accuracy": accuracy(train_out.cpu(), labels), **extra}
        if val is not None and val_labels is not None and val.n:
            rec["val_accuracy"] = accuracy((val.outputs + val.jvp(v)).cpu(), val_labels)
        else:
            rec["val_accuracy"] = None
        records.append(rec)
    size = distributed.world()[1]  # the kernel route split the ridges: ridge i is process i % size's
    if size > 1 and route == "kernel":
        records = [distributed.broadcast(rec, src=i % size) for i, rec in enumerate(records)]
    best = choose(records)
    if size > 1 and route == "kernel":
        mine = solutions[best][0] if solutions[best] is not None else None
        dw = distributed.broadcast_tensor(mine, src=best % size, numel=int(minv.numel()))
    else:
        dw = solutions[best][0]
    delta = _unflat(dw.to(lin.delta[0].dtype), lin.delta)
    return GridResult(records=records, chosen=best, delta=delta, scale=scale, info=info)


#: relative residual of the dual system the kernel route refines its solutions to, and the
#: largest it accepts as solved (a factorization that leaves more is reported unconverged)
DUAL_TOL = 1e-10
DUAL_ACCEPT = 1e-6


def shifted_solve(kernel: torch.Tensor, r: torch.Tensor, shift: float) -> tuple[torch.Tensor, float, str]:
    """``alpha = (K + shift I)^-1 r`` for a float64 ``K``; returns ``alpha``, its relative residual
    and how it was solved.

    A float32 Cholesky factorization (half the time of a float64 one) refined by float64
    residuals, ``alpha += L^-T L^-1 (r - (K + shift I) alpha)``: each step shrinks the error by
    about ``cond * 6e-8``, so a few steps reach ``DUAL_TOL``. When float32 cannot factor the
    matrix or the refinement stalls, a float64 Cholesky factorization solves it directly.
    """
    n = kernel.shape[0]
    eye = torch.arange(n, device=kernel.device)

    def residual(alpha: torch.Tensor) -> torch.Tensor:
        return r - kernel @ alpha - shift * alpha

    def solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        y = torch.linalg.solve_triangular(factor, rhs.unsqueeze(1), upper=False)
        return torch.linalg.solve_triangular(factor.T, y, upper=True).squeeze(1)

    rnorm = float(r.norm()) or 1.0
    single = kernel.float()
    single[eye, eye] += shift
    factor, bad = torch.linalg.cholesky_ex(single)
    del single
    if not int(bad):
        alpha = solve(factor, r.float()).double()
        for _ in range(8):
            res = residual(alpha)
            rel = float(res.norm()) / rnorm
            if rel <= DUAL_TOL:
                return alpha, rel, "float32 Cholesky, float64 refinement"
            alpha = alpha + solve(factor, res.float()).double()
    del factor
    kernel[eye, eye] += shift
    factor, bad = torch.linalg.cholesky_ex(kernel)
    kernel[eye, eye] -= shift
    if int(bad):
        raise RuntimeError(f"the tangent kernel plus {shift:.3g} I is not positive definite")
    alpha = solve(factor, r)
    return alpha, float(residual(alpha).norm()) / rnorm, "float64 Cholesky"


def _kernel_route(train, residual, rel, scale, metric, minv, on_kernel, say):
    n, c = train.n, train.classes
    rank, size = distributed.world()
    traffic = dict(distributed.TRAFFIC)
    # under torchrun each process sums its share of the kernel's blocks; one all-reduce joins them
    kernel = tangent_kernel(train, metric=metric, on_block=on_kernel, part=(rank, size))
    distributed.all_reduce_sum(kernel)
    r = residual.reshape(-1)
    solutions: list = []
    for index, value in enumerate(rel):
        if index % size != rank:  # another process solves this ridge (solve_grid shares the records)
            solutions.append(None)
            continue
        shift = value * scale * n  # N lam
        alpha, res, how = shifted_solve(kernel, r, shift)
        dw = _flat(train.vjp(alpha.reshape(n, c).to(train.dtype))).double() * minv.double()
        solutions.append(
            (dw, {"converged": res <= DUAL_ACCEPT, "residual": res, "iterations": None, "solve": how})
        )
        say(f"ridge {value:g}: {how}, dual residual {res:.1e}")
    info: dict[str, Any] = {"kernel_rows": n * c, "factorizations": len(rel)}
    if size > 1:
        info["kernel_all_reduce_bytes"] = (
            distributed.TRAFFIC["all_reduce_bytes"] - traffic["all_reduce_bytes"]
        )
        info["factorizations_here"] = sum(s is not None for s in solutions)
    return solutions, info


def _cg_route(lin, train, residual, rel, scale, minv, tol, max_iter, on_iteration):
    n = train.n
    s = minv.sqrt()  # dw = M^-1/2 z: (M^-1/2 J^T J M^-1/2 / N + lam I) z = M^-1/2 J^T r / N
    products = [0]

    def op(z: torch.Tensor) -> torch.Tensor:
        products[0] += 1
        return s * _flat(train.normal(_unflat(s * z, lin.delta))) / n

    b = s * _flat(train.vjp(residual.to(train.dtype))) / n
    shifts = [value * scale for value in rel]
    result = multishift_cg(op, b, shifts, tol=tol, max_iter=max_iter, callback=on_iteration)
    solutions = []
    for z, res, it, ok in zip(result.x, result.residuals, result.iterations, result.converged, strict=True):
        solutions.append(((s * z).double(), {"converged": ok, "residual": res, "iterations": it}))
    return solutions, {"matrix_products": products[0], "tol": tol, "max_iter": max_iter}
