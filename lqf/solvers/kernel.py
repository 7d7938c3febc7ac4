"""The exact solution of the LQF problem through the empirical NTK, with ``J`` materialized.

This is the dense reference (and the route before the factored tangent kernel): ``--solver
kernel`` now forms ``K`` without ``J`` (:mod:`lqf.linearization.kernel`,
:mod:`lqf.solvers.grid`); the benchmarks compare the two.

With ``K = J M^{-1} J^T`` (``(N C, N C)``, the empirical neural tangent kernel
in the metric ``M``) the minimiser of the LQF loss is

    dw = M^{-1} J^T alpha,        alpha = (K + N lam I)^{-1} r,

(push-through identity applied to the normal equations). ``J`` is written in
place in column blocks (:func:`~lqf.solvers.jacobian.fill_jacobian`), so the
peak memory is ``J`` itself plus one small block; ``K`` is accumulated in
float64 over column chunks, and one eigendecomposition of ``K`` gives the
solution for every ``lam`` on a grid at the cost of one ``J^T alpha`` each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lqf.errors import LqfError
from lqf.solvers.jacobian import fill_jacobian
from lqf.solvers.problem import QuadraticProblem


class KernelSolver:
    """Eigendecomposed empirical NTK of a :class:`QuadraticProblem`.

    Args:
        problem: the LQF problem (its ``lam`` is ignored: see :meth:`solve`).
        memory_mb: memory for the Jacobian (float32) kept to form ``J^T alpha``.
        max_rows: refuse problems with more than this many ``N * C`` rows
            (the kernel costs ``(N C)^2`` memory and ``(N C)^3`` time).
    """

    def __init__(self, problem: QuadraticProblem, memory_mb: float = 4096.0, max_rows: int = 6000) -> None:
        rows = problem.n * problem.residual.shape[1]
        if rows > max_rows:
            raise LqfError(
                f"the kernel solver needs N*C = {rows} <= {max_rows} rows; "
                "use --solver cg for this many images"
            )
        needed = rows * problem.dim * 4 / 2**20
        if needed > memory_mb:
            raise LqfError(
                f"the kernel solver would need {needed:.0f} MB for the Jacobian (limit {memory_mb:.0f} MB); "
                "linearize fewer layers or use --solver cg"
            )
        self.problem = problem
        jac = torch.empty(rows, problem.dim, dtype=problem.dtype, device=problem.device)
        fill_jacobian(problem.model, problem.inputs, jac)
        self.jac = jac
        minv = 1.0 / problem.metric
        kernel = torch.zeros(rows, rows, dtype=torch.float64, device=problem.device)
        step = max(1, int(64 * 2**20 / 4 / max(1, rows)))
        for lo in range(0, problem.dim, step):
            block = jac[:, lo : lo + step]
            kernel += ((block * minv[lo : lo + step]) @ block.T).double()
        self.kernel = kernel
        self.evals, self.evecs = torch.linalg.eigh(self.kernel)
        self.evals.clamp_(min=0)
        self.r = problem.residual.reshape(-1).double()
        self._rt = self.evecs.T @ self.r
        self.minv = minv

    def mean_eigenvalue(self) -> float:
        """``trace(K) / (N C)``."""
        return float(self.evals.mean())

    def solve(self, lam: float) -> torch.Tensor:
        """The exact minimiser ``dw`` (flat) for ridge strength ``lam > 0``."""
        n = self.problem.n
        alpha = self.evecs @ (self._rt / (self.evals + n * lam))
        return self.minv * (self.jac.T @ alpha.to(self.jac.dtype))

    def solve_path(self, lams: Sequence[float]) -> list[torch.Tensor]:
        """:meth:`solve` for each value of ``lams``."""
        return [self.solve(lam) for lam in lams]
