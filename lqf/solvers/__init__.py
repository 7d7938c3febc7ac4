"""Solvers for the LQF quadratic problem: conjugate gradient, kernel (NTK), mini-batch."""

from lqf.solvers.cg import CGResult, conjugate_gradient
from lqf.solvers.kernel import KernelSolver
from lqf.solvers.problem import QuadraticProblem

__all__ = ["CGResult", "KernelSolver", "QuadraticProblem", "conjugate_gradient"]
