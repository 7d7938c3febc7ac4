"""The three LQF solvers reach the exact optimum of the same quadratic problem."""

from __future__ import annotations

import torch
from torch import nn

from lqf.curvature import KFAC
from lqf.linearization import LinearizedModel
from lqf.linearization.jacobian import jacobian
from lqf.solvers import KernelSolver, QuadraticProblem, conjugate_gradient
from lqf.solvers.jacobian import fill_jacobian
from lqf.solvers.minibatch import PreconditionedOptimizer

N, C = 24, 3


def _problem(lam: float = 0.05, seed: int = 0, order: torch.Tensor | None = None) -> QuadraticProblem:
    torch.manual_seed(0)  # the network and data are fixed; ``seed`` only permutes
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.LeakyReLU(0.1),
        nn.Conv2d(4, 4, 3, groups=4, padding=1),
        nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, C),
    ).double()
    net.eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(N, 2, 5, 5, dtype=torch.float64)
    t = nn.functional.one_hot(torch.arange(N) % C, C).double()
    if order is not None:
        x, t = x[order], t[order]
    lin = LinearizedModel(net, [n for n, _ in net.named_parameters()])
    return QuadraticProblem(lin, x, t, lam, metric=None, batch_size=7)


def _exact(problem: QuadraticProblem) -> torch.Tensor:
    """Normal equations with the dense Jacobian: (J^T J / N + lam I) dw = J^T r / N."""
    jac = jacobian(problem.model, problem.inputs).reshape(problem.n * C, -1)
    h = jac.T @ jac / problem.n + problem.lam * torch.eye(jac.shape[1], dtype=torch.float64)
    return torch.linalg.solve(h, jac.T @ problem.residual.reshape(-1) / problem.n)


def test_hvp_and_gradient_match_the_dense_matrices() -> None:
    problem = _problem()
    jac = jacobian(problem.model, problem.inputs).reshape(problem.n * C, -1)
    h = jac.T @ jac / problem.n + problem.lam * torch.eye(jac.shape[1], dtype=torch.float64)
    v = torch.randn(problem.dim, dtype=torch.float64)
    assert torch.allclose(problem.hvp(v), h @ v, atol=1e-12)
    b = jac.T @ problem.residual.reshape(-1) / problem.n
    assert torch.allclose(problem.gradient(v), h @ v - b, atol=1e-12)


def test_fill_jacobian_in_small_blocks_equals_the_whole_jacobian() -> None:
    """Many column groups (one tensor each) and row batches that do not divide N: exact copy."""
    problem = _problem()
    ref = jacobian(problem.model, problem.inputs).reshape(problem.n * C, -1)
    out = torch.full_like(ref, float("nan"))
    fill_jacobian(problem.model, problem.inputs, out, chunk_mb=1e-6, batch_size=5)
    assert torch.equal(out, ref)


def test_kernel_solver_is_exact() -> None:
    """Kernel (dual) solution equals the primal normal equations to 1e-5 relative (float64: far below)."""
    problem = _problem()
    ref = _exact(problem)
    dw = KernelSolver(problem).solve(problem.lam)
    assert (dw - ref).norm() / ref.norm() < 1e-5


def test_cg_with_and_without_kfac_reaches_the_optimum() -> None:
    problem = _problem()
    ref = _exact(problem)
    plain = conjugate_gradient(problem.hvp, problem.rhs(), tol=1e-10, max_iter=2000)
    kfac = KFAC(problem.model, problem.inputs)
    damping = 1e-3 * kfac.mean_eigenvalue()
    pre = conjugate_gradient(
        problem.hvp,
        problem.rhs(),
        precondition=lambda v: kfac.inverse(v, damping, problem.lam),
        tol=1e-10,
        max_iter=2000,
    )
    for res in (plain, pre):
        assert res.converged
        assert (res.x - ref).norm() / ref.norm() < 1e-7


def test_preconditioned_optimizer_reaches_the_optimum() -> None:
    """The mini-batch solver's update (K-FAC-preconditioned SGD with momentum and the ridge
    term), run on full batches so that no sampling noise remains, converges to the exact
    optimum (1e-5 relative). Mini-batches add only noise around that fixed point."""
    problem = _problem()
    ref = _exact(problem)
    lin = problem.model
    kfac = KFAC(lin, problem.inputs)
    damping = 1e-2 * kfac.mean_eigenvalue()
    opt = PreconditionedOptimizer(
        lin.delta.parameters(), 0.5, problem.lam, lambda g: kfac.inverse(g, damping, problem.lam)
    )
    for _ in range(300):
        out = sum(lin.primal_tangent(problem.inputs, list(lin.delta)))
        loss = 0.5 * (out - problem.targets).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dw = problem.flatten([d.detach() for d in lin.delta])
    assert (dw - ref).norm() / ref.norm() < 1e-5


def test_seed_and_data_order_do_not_change_the_solution() -> None:
    """Two solves differing in data order and starting point give outputs equal to 1e-3."""
    a = _problem()
    order = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    b = _problem(order=order)
    x0 = torch.randn(b.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sa = conjugate_gradient(a.hvp, a.rhs(), tol=1e-8, max_iter=2000).x
    sb = conjugate_gradient(b.hvp, b.rhs(), x0=x0, tol=1e-8, max_iter=2000).x
    test = torch.randn(10, 2, 5, 5, dtype=torch.float64)
    out_a = a.model.jvp(test, a.unflatten(sa))
    out_b = b.model.jvp(test, b.unflatten(sb))
    assert (out_a - out_b).abs().max() < 1e-3
