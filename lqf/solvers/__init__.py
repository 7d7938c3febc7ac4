"""Solvers for the LQF quadratic problem: the ridge grid by the tangent kernel or multi-shift CG
(grid.py, planned by plan.py), conjugate gradient, the materialized-J kernel, mini-batch."""

from lqf.solvers.cg import CGResult, conjugate_gradient
from lqf.solvers.kernel import KernelSolver
from lqf.solvers.problem import QuadraticProblem

__all__ = ["CGResult", "KernelSolver", "QuadraticProblem", "conjugate_gradient"]
