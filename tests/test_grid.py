"""The ridge grid: multi-shift CG against dense solves, both routes against the closed form, the plan."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lqf.errors import LqfError
from lqf.linearization import LinearizedModel
from lqf.linearization.factors import JacobianFactors
from lqf.linearization.jacobian import jacobian
from lqf.linearization.streamed import StreamedJacobian
from lqf.solvers.grid import choose, solve_grid
from lqf.solvers.multishift import multishift_cg
from lqf.solvers.plan import Costs, plan_solver

from .conftest import tiny_net


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 60), rank=st.integers(1, 60))
def test_multishift_cg_solves_every_shift_like_a_dense_solve(seed, n, rank) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, dtype=torch.float64, generator=g)
    a = x @ x.T  # positive semi-definite, possibly singular
    b = torch.randn(n, dtype=torch.float64, generator=g)
    shifts = [1e-2, 0.3, 1.0, 5.0]
    res = multishift_cg(lambda v: a @ v, b, shifts, tol=1e-10, max_iter=10 * n)
    assert all(res.converged)
    for s, xs in zip(shifts, res.x, strict=True):
        want = torch.linalg.solve(a + s * torch.eye(n, dtype=torch.float64), b)
        assert float((xs - want).norm() / want.norm()) < 1e-7
    # one Krylov sequence: the grid costs the products of its slowest (smallest) shift
    assert max(res.iterations) == res.iterations[0] == len(res.history) - 1


def test_multishift_cg_says_which_shifts_stopped_short() -> None:
    torch.manual_seed(0)
    x = torch.randn(80, 80, dtype=torch.float64)
    a = x @ x.T
    b = torch.randn(80, dtype=torch.float64)
    res = multishift_cg(lambda v: a @ v, b, [1e-4, 1e3], tol=1e-8, max_iter=5)
    assert res.iterations[0] == 5 and not res.converged[0]
    assert res.residuals[0] > 1e-8
    true = float((b - (a + 1e-4 * torch.eye(80, dtype=torch.float64)) @ res.x[0]).norm() / b.norm())
    assert res.residuals[0] == pytest.approx(true, rel=1e-6)  # the recurrence's residual is the true one
    with pytest.raises(ValueError):
        multishift_cg(lambda v: a @ v, b, [-1.0])


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    net = tiny_net().double().eval()
    lin = LinearizedModel(net, [n for n, _ in net.named_parameters()])
    x = torch.rand(12, 3, 12, 12, dtype=torch.float64)
    xv = torch.rand(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    yv = torch.randint(0, 5, (6,))
    t = 2.0 * torch.nn.functional.one_hot(y, 5).double()
    return lin, x, xv, t, yv


def _closed_form(lin, x, t, lam, metric):
    """``(J^T J / N + lam M)^-1 J^T r / N`` from the dense Jacobian."""
    n = x.shape[0]
    j = jacobian(lin, x).reshape(-1, lin.num_linearized())
    r = (t - lin.primal(x)).reshape(-1)
    m = torch.cat(
        [torch.full((d.numel(),), v, dtype=torch.float64) for d, v in zip(lin.delta, metric, strict=True)]
    )
    return torch.linalg.solve(j.T @ j / n + lam * torch.diag(m), j.T @ r / n), j


@pytest.mark.parametrize("route,storage", [("kernel", "factors"), ("cg", "factors"), ("cg", "streamed")])
def test_both_routes_give_the_closed_form_at_every_ridge(route, storage) -> None:
    lin, x, xv, t, yv = _problem()
    metric = [1.0 + (i % 2) for i in range(len(lin.delta))]
    train = JacobianFactors(lin, x) if storage == "factors" else StreamedJacobian(lin, x, batch_size=5)
    val = JacobianFactors(lin, xv)
    rel = [1e-2, 1e-1, 1.0]
    result = solve_grid(lin, train, t, val, yv, rel, route=route, metric=metric, tol=1e-10, max_iter=5000)
    j = jacobian(lin, x).reshape(-1, lin.num_linearized())
    minv = torch.cat(
        [torch.full((d.numel(),), 1 / v, dtype=torch.float64) for d, v in zip(lin.delta, metric, strict=True)]
    )
    scale = float(((j * minv) * j).sum()) / j.shape[0] / x.shape[0]  # exact trace / (N C) / N
    assert result.scale == pytest.approx(scale, rel=1e-12)
    jv = jacobian(lin, xv).reshape(-1, lin.num_linearized())
    for rec, r in zip(result.records, rel, strict=True):
        want, _ = _closed_form(lin, x, t, r * scale, metric)
        val_out = lin.primal(xv) + (jv @ want).reshape(6, 5)
        assert rec["converged"] and rec["ridge_relative"] == r
        assert rec["val_accuracy"] == pytest.approx(float((val_out.argmax(1) == yv).double().mean()))
    best, _ = _closed_form(lin, x, t, rel[result.chosen] * scale, metric)
    got = torch.cat([d.reshape(-1) for d in result.delta])
    assert float((got - best).norm() / best.norm()) < 1e-7


def test_the_choice_prefers_converged_ridges_then_validation_then_strength() -> None:
    recs = [
        {"ridge_relative": 0.01, "val_accuracy": 0.9, "converged": False},
        {"ridge_relative": 0.1, "val_accuracy": 0.8, "converged": True},
        {"ridge_relative": 1.0, "val_accuracy": 0.8, "converged": True},
    ]
    assert choose(recs) == 2  # the unconverged 0.9 is never chosen silently; the tie goes to 1.0
    for r in recs:
        r["converged"] = False
    assert choose(recs) == 0  # none converged: the best of all (the summary says so)
    assert choose([{**r, "val_accuracy": None} for r in recs]) == 2


def test_the_plan_picks_by_predicted_time_and_refuses_what_does_not_fit() -> None:
    lin, x, *_ = _problem()
    costs = Costs.probe(lin, x[:2])
    assert costs.factor_bytes > 0 and costs.pair_flops > 0 and costs.classes == 5
    plan = plan_solver("auto", costs, 12, 6, 5, memory_mb=4096, max_iter=1000)
    assert plan.route == "kernel" and plan.reason.startswith("auto: predicted kernel")
    assert set(plan.predicted) == {"kernel", "cg", "cg-streamed"}
    # a budget the kernel does not fit but the factors do: cg with stored factors
    rows = 3000 * 5
    big = plan_solver("auto", costs, 3000, 0, 5, memory_mb=rows * rows * 16 / 2**20 * 0.5, max_iter=1000)
    assert big.route == "cg" and big.storage == "factors"
    with pytest.raises(LqfError, match=r"kernel route needs about \d+ MiB for 15000 rows.*--solver cg"):
        plan_solver("kernel", costs, 3000, 0, 5, memory_mb=100, max_iter=1000)
    streamed = plan_solver("cg", costs, 3000, 0, 5, memory_mb=1, max_iter=1000)
    assert streamed.storage == "streamed"
