"""How ``--method lqf`` solves its ridge grid, shows it, and records it.

* ``kernel`` and ``cg``: every ridge by one route of :mod:`lqf.solvers.grid` (the tangent
  kernel without ``J``, Cholesky per ridge; or multi-shift CG from one Krylov sequence),
  planned by :mod:`lqf.solvers.plan` before any long computation starts.
* ``cg`` with ``--preconditioner kfac``: K-FAC cannot precondition a multi-shift sequence, so
  each ridge gets its own preconditioned CG, from the strongest ridge to the weakest, each
  warm-started from the last.

Each stage shows progress (:class:`~lqf.training.progress.Stage`), and the records of every
ridge (validation and training accuracy, residual, iterations, whether it converged) go to
``metrics.json``; a ridge that stopped short of ``--tol`` is named in the run's summary.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lqf import distributed
from lqf.linearization.factors import JacobianFactors
from lqf.linearization.linear_model import LinearizedModel
from lqf.linearization.streamed import StreamedJacobian
from lqf.solvers import QuadraticProblem, conjugate_gradient
from lqf.solvers.grid import solve_grid
from lqf.solvers.plan import Costs, Plan, plan_solver
from lqf.solvers.problem import hutchinson_trace
from lqf.training.context import FitContext
from lqf.training.evaluate import accuracy
from lqf.training.progress import Stage, say

#: inputs per batch when building factors (bounds the temporary memory of the vmapped backward)
FACTOR_BATCH = 64


def predict_linear(lin: LinearizedModel, x: torch.Tensor, v, batch: int = 256) -> torch.Tensor:
    """``f_lin(x; w0 + v)`` ``(N, C)`` on the CPU (``x`` moved to ``v``'s device batch by batch)."""
    with torch.no_grad():
        parts = [
            sum(lin.primal_tangent(x[i : i + batch].to(v[0].device), v)) for i in range(0, len(x), batch)
        ]
    return torch.cat(parts).cpu()


def make_plan(options, lin: LinearizedModel, xtr: torch.Tensor, n_val: int, ridges: int) -> Plan:
    """The route for ``--solver`` (see :func:`lqf.solvers.plan.plan_solver`), from two probe inputs."""
    device = lin.delta[0].device
    costs = Costs.probe(lin, xtr[:2].to(device))
    return plan_solver(
        options.solver,
        costs,
        len(xtr),
        n_val,
        ridges,
        memory_mb=memory_budget(options.kernel_memory_mb),
        max_iter=options.max_iter,
    )


def memory_budget(given: float | None) -> float:
    """``--kernel-memory-mb``, or half the memory available now (4096 MiB where the OS does not say)."""
    if given is not None:
        return given
    from lqf.resources import available_memory_mb

    free = available_memory_mb()
    return 4096.0 if free is None else free / 2


def _jacobian(lin, x, storage: str, desc: str, quiet: bool):
    with Stage(desc, len(x), quiet=quiet, unit="img") as stage:
        if storage == "streamed":
            return StreamedJacobian(lin, x, on_batch=stage.set)
        return JacobianFactors(lin, x, batch_size=FACTOR_BATCH, on_batch=stage.set)


def solve_ridges(
    options,
    lin: LinearizedModel,
    plan: Plan,
    xtr: torch.Tensor,
    targets: torch.Tensor,
    xva: torch.Tensor | None,
    yva: torch.Tensor | None,
    ridges: list[float],
    ctx: FitContext,
    epoch: int = 1,
) -> dict[str, Any]:
    """Solve every ridge by ``plan``'s route, keep the best on validation in ``lin.delta``;
    returns the chosen ridge's record."""
    quiet = ctx.quiet
    if plan.route == "cg" and distributed.active():
        # under torchrun each process makes the factors of its share of the rows only; CG's products
        # with J^T J are then one all-reduce of the P linearized parameters each
        from lqf.linearization.sharded import ShardedJacobian

        rows = distributed.shard(len(xtr))
        local = _jacobian(
            lin, xtr[rows], plan.storage, "tangent factors (train, this process's share)", quiet
        )
        train = ShardedJacobian(local, len(xtr))
    else:
        train = _jacobian(lin, xtr, plan.storage, "tangent factors (train)", quiet)
    traffic = dict(distributed.TRAFFIC)
    # validation needs only J_val dw per ridge: jvp passes (no factors, no backward pass)
    val = _jacobian(lin, xva, "streamed", "validation outputs", quiet) if xva is not None else None
    if plan.route == "kernel":
        stage = Stage(f"tangent kernel ({train.n * train.classes} rows)", 1.0, quiet=quiet, unit="")

        def line(text: str) -> None:  # the kernel is done once the first ridge speaks
            stage.close()
            say(text, quiet=quiet)

        result = solve_grid(
            lin, train, targets, val, yva, ridges, route="kernel", on_kernel=stage.set, say=line
        )
    else:
        stage = Stage(f"multi-shift cg ({len(ridges)} ridges)", options.max_iter, quiet=quiet, unit="it")

        def on_iteration(it: int, residuals: list[float]) -> None:
            stage.set(it)
            stage.note("residuals " + " ".join(f"{r:.0e}" for r in residuals))

        result = solve_grid(
            lin,
            train,
            targets,
            val,
            yva,
            ridges,
            route="cg",
            tol=options.tol,
            max_iter=options.max_iter,
            on_iteration=on_iteration,
        )
        stage.close()
    if distributed.active():
        sent = {k: distributed.TRAFFIC[k] - traffic[k] for k in traffic}
        result.info["processes"] = distributed.world()[1]
        result.info["all_reduce_calls"] = sent["all_reduce_calls"]
        result.info["all_reduce_bytes"] = sent["all_reduce_bytes"]
        result.info["gather_bytes"] = sent["gather_bytes"]
        # cg: one all-reduce of the P linearized parameters per product with J^T J, one for J^T r;
        # kernel: one of the (N C)^2 kernel (float64)
        result.info["all_reduce_bytes_each"] = sent["all_reduce_bytes"] / max(1, sent["all_reduce_calls"])
    with torch.no_grad():
        for d, v in zip(lin.delta, result.delta, strict=True):
            d.copy_(v)
    chosen = result.records[result.chosen]
    ctx.extra["ridge_scale"] = result.scale
    ctx.extra["ridge_relative"] = chosen["ridge_relative"]
    ctx.extra["ridge_grid"] = result.records
    ctx.extra["solver_info"] = result.info
    unconverged = [r for r in result.records if not r["converged"]]
    notes = ctx.extra.setdefault("notes", [])
    for r in unconverged:
        notes.append(
            f"ridge {r['ridge_relative']:g} stopped at relative residual {r['residual']:.1e} after "
            f"{r['iterations']} iterations, short of --tol {options.tol:g}"
            + ("; it was chosen because no ridge converged" if r is chosen else "; not chosen")
        )
    ctx.log({"epoch": epoch, **{k: v for k, v in chosen.items() if k != "ridge_relative"}})
    return chosen


def solve_kfac_cg(
    options,
    lin: LinearizedModel,
    xtr,
    targets,
    xva,
    yva,
    ridges: list[float],
    ctx: FitContext,
    epoch: int = 1,
) -> dict[str, Any]:
    """``--solver cg --preconditioner kfac``: one K-FAC-preconditioned CG per ridge (strong to weak,
    warm-started), the ridge chosen on validation; returns the chosen ridge's record."""
    from lqf.curvature import KFAC

    problem = QuadraticProblem(lin, xtr, targets, 0.0, batch_size=128)
    scale = hutchinson_trace(problem) / problem.residual.numel() / problem.n
    ctx.extra["ridge_scale"] = scale
    kfac = KFAC(lin, problem.inputs, batch_size=64)
    if kfac.all_reduce_bytes:
        ctx.extra["kfac_all_reduce_bytes"] = kfac.all_reduce_bytes
    damping = options.damping * kfac.mean_eigenvalue()
    b = problem.rhs()
    x = None
    records: list[dict[str, Any]] = []
    best = None
    for r in sorted(ridges, reverse=True):
        problem.lam = r * scale
        with Stage(f"cg, ridge {r:g}", options.max_iter, quiet=ctx.quiet) as stage:
            res = conjugate_gradient(
                problem.hvp,
                b,
                x0=x,
                precondition=lambda v, lam=problem.lam: kfac.inverse(v, damping, lam),
                tol=options.tol,
                max_iter=options.max_iter,
                callback=lambda it, _x, rel: (stage.set(it), stage.note(f"residual {rel:.1e}")),
            )
        x = res.x
        v = problem.unflatten(x)
        val_acc = accuracy(predict_linear(lin, xva, v), yva) if xva is not None else float("nan")
        train_acc = accuracy(predict_linear(lin, problem.inputs, v), problem.targets.argmax(1).cpu())
        rec = {
            "ridge_relative": r,
            "val_accuracy": None if math.isnan(val_acc) else val_acc,
            "train_accuracy": train_acc,
            "converged": res.converged,
            "residual": res.residual,
            "iterations": res.iterations,
        }
        records.append(rec)
        key = (rec["converged"], val_acc if not math.isnan(val_acc) else 0.0, r)
        if best is None or key > best[0]:
            best = (key, rec, x.clone())
    _, chosen, dw = best
    with torch.no_grad():
        for d, val in zip(lin.delta, problem.unflatten(dw), strict=True):
            d.copy_(val)
    ctx.extra["ridge_relative"] = chosen["ridge_relative"]
    ctx.extra["ridge_grid"] = records
    ctx.extra["preconditioner"] = "kfac"
    ctx.log({"epoch": epoch, **{k: v for k, v in chosen.items() if k != "ridge_relative"}})
    return chosen
