"""Expected risk over Gaussian samples: Monte Carlo, exact closed forms and the similarity measure.

Rows of ``X`` are drawn ``x ~ N(0, Sigma)`` and labels ``y = X theta_T + eps``,
``eps ~ N(0, noise^2 I)``. For an estimator ``theta_hat(X, y)`` we estimate
``E_{X, eps} ||Sigma^{1/2} (theta_hat - theta_T)||^2`` by Monte Carlo with a 95% normal
confidence interval, and give it in closed form where one exists:

* isotropic ``Sigma = s I`` (exact, any ``theta_0``; ``delta = theta_T - theta_0``)::

      n < d - 1:  s (1 - n/d) ||delta||^2 + noise^2 n / (d - n - 1)
      n > d + 1:  noise^2 d / (n - d - 1)        (bias 0: X has full column rank)

* general ``Sigma`` with eigenpairs ``(lambda_i, v_i)``: the deterministic equivalent
  (asymptotically exact as n, d grow with n/d fixed) with ``kappa_n > 0`` solving
  ``sum_i lambda_i / (lambda_i + kappa_n) = n``::

      bias     ~  kappa_n^2 sum_i lambda_i <v_i, delta>^2 / (lambda_i + kappa_n)^2 / (1 - t_n / n)
      variance ~  noise^2 t_n / (n - t_n),      t_n = sum_i lambda_i^2 / (lambda_i + kappa_n)^2

  The bias term is the *similarity measure* ``S_n(theta_0, theta_T; Sigma)``: the
  Sigma-weighted energy of ``delta`` in the directions the ``n`` samples have not seen
  (eigen-directions with ``lambda_i`` small against ``kappa_n``). See docs/theory.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lqf.errors import LqfError
from lqf.theory._arrays import as_f64
from lqf.theory.linear import closest_interpolant, population_risk, ridge_loo


@dataclass(frozen=True)
class Covariance:
    """``Sigma = V diag(eigs) V^T``: ``eigs`` (d,) non-negative, ``basis`` V (d, d) orthonormal columns."""

    eigs: np.ndarray
    basis: np.ndarray

    @classmethod
    def isotropic(cls, d: int, scale: float = 1.0) -> Covariance:
        return cls(np.full(d, float(scale)), np.eye(d))

    @classmethod
    def from_matrix(cls, sigma: Any) -> Covariance:
        mat = as_f64(sigma, "Sigma", 2)
        if mat.shape[0] != mat.shape[1] or not np.allclose(mat, mat.T):
            raise LqfError(f"Sigma must be a symmetric square matrix, got shape {mat.shape}")
        eigs, basis = np.linalg.eigh(mat)
        if eigs.min() < -1e-10 * max(1.0, eigs.max()):
            raise LqfError("Sigma must be positive semi-definite")
        order = np.argsort(eigs)[::-1]
        return cls(np.clip(eigs[order], 0, None), basis[:, order])

    @classmethod
    def power_law(cls, d: int, exponent: float, seed: int | None = None) -> Covariance:
        """Eigenvalues ``i^-exponent`` (normalised to trace d); a random basis if ``seed`` is given."""
        eigs = np.arange(1, d + 1, dtype=np.float64) ** (-float(exponent))
        eigs *= d / eigs.sum()
        if seed is None:
            return cls(eigs, np.eye(d))
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
        return cls(eigs, q * np.sign(np.diag(r)))

    @property
    def d(self) -> int:
        return int(self.eigs.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        return (self.basis * self.eigs) @ self.basis.T

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows ``x ~ N(0, Sigma)``: ``Z diag(sqrt(eigs)) V^T`` with ``Z`` standard normal, (n, d)."""
        return (rng.standard_normal((n, self.d)) * np.sqrt(self.eigs)) @ self.basis.T


@dataclass
class MCEstimate:
    """Monte Carlo mean with a 95% normal interval ``mean +- half_width`` over ``values`` (draws,)."""

    mean: float
    half_width: float
    values: np.ndarray

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def mc_summary(values: Any) -> MCEstimate:
    v = np.asarray(values, dtype=np.float64)
    half = 1.959963984540054 * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else np.inf
    return MCEstimate(float(v.mean()), float(half), v)


Estimator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def estimator(name: str, theta_S: Any) -> Estimator:
    """A named estimator ``(X, y) -> theta``: ``finetune`` (GD from theta_S), ``scratch`` (GD
    from 0), ``ridge`` (ridge towards theta_S, penalty by leave-one-out)."""
    ts = as_f64(theta_S, "theta_S", 1)
    if name == "finetune":
        return lambda X, y: closest_interpolant(X, y, ts)
    if name == "scratch":
        return lambda X, y: closest_interpolant(X, y, np.zeros_like(ts))
    if name == "ridge":
        return lambda X, y: ridge_loo(X, y, ts)[1]
    raise LqfError(f"unknown estimator {name!r}; valid: finetune, scratch, ridge")


def monte_carlo_risk(
    fit: Estimator,
    n: int,
    cov: Covariance,
    theta_T: Any,
    *,
    noise: float = 0.0,
    draws: int = 1000,
    seed: int = 0,
) -> MCEstimate:
    """Monte Carlo estimate of ``E ||Sigma^{1/2} (fit(X, y) - theta_T)||^2`` over fresh samples.

    Each draw samples ``X`` (n, d) from ``cov`` and ``y = X theta_T + noise * N(0, I)``
    from ``numpy.random.default_rng(seed)``, fits, and computes the exact population risk.
    """
    if n <= 0 or draws <= 0:
        raise LqfError(f"n={n} and draws={draws} must be positive")
    tt = as_f64(theta_T, "theta_T", 1)
    rng = np.random.default_rng(seed)
    sig = cov.matrix
    values = np.empty(draws)
    for k in range(draws):
        X = cov.sample(n, rng)
        y = X @ tt + noise * rng.standard_normal(n)
        values[k] = population_risk(fit(X, y), tt, sig)
    return mc_summary(values)


def isotropic_expected_risk(n: int, d: int, delta_sq: float, noise: float = 0.0, scale: float = 1.0) -> float:
    """Exact ``E`` risk of GD from ``theta_0`` for ``Sigma = scale * I``.

    ``delta_sq = ||theta_T - theta_0||^2``.

    Row space of ``X`` is a uniformly random n-plane, so ``E[I - P] = (1 - n/d) I``;
    ``X X^T / scale`` is Wishart(d, I_n), so ``E tr((X X^T)^-1) scale = n / (d - n - 1)``.
    Returns ``inf`` where the noise term diverges (``d - 1 <= n <= d + 1`` with noise).
    """
    if n <= 0 or d <= 0:
        raise LqfError(f"n={n} and d={d} must be positive")
    bias = scale * max(0.0, 1.0 - n / d) * delta_sq
    if noise == 0:
        return bias
    if n < d - 1:
        return bias + noise**2 * n / (d - n - 1)
    if n > d + 1:
        return noise**2 * d / (n - d - 1)
    return float("inf")


def unseen_scale(n: int, eigs: Any) -> float:
    """``kappa_n >= 0`` solving ``sum_i lambda_i / (lambda_i + kappa) = n`` (0 if rank(Sigma) <= n).

    ``lambda_i / (lambda_i + kappa_n)`` is how much of eigen-direction ``i`` the ``n``
    samples pin down; the weights add up to ``n``.
    """
    lam = as_f64(eigs, "eigs", 1)
    lam = lam[lam > 0]
    if lam.size <= n:
        return 0.0
    lo, hi = 0.0, float(lam.max())
    while np.sum(lam / (lam + hi)) > n:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.sum(lam / (lam + mid)) > n:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def similarity_measure(n: int, theta_0: Any, theta_T: Any, cov: Covariance) -> float:
    """``S_n``: the Sigma-weighted energy of ``delta = theta_T - theta_0`` in the unseen directions.

    ``S_n = kappa_n^2 sum_i lambda_i c_i^2 / (lambda_i + kappa_n)^2 / (1 - t_n / n)`` with
    ``c = V^T delta``; the deterministic equivalent of the expected bias of GD from
    ``theta_0`` with ``n`` samples (exact for isotropic Sigma: ``(1 - n/d) ||delta||^2``).
    """
    c = cov.basis.T @ (as_f64(theta_T, "theta_T", 1) - as_f64(theta_0, "theta_0", 1))
    lam = cov.eigs
    kappa = unseen_scale(n, lam)
    if kappa == 0.0:
        return 0.0
    t = np.sum(lam**2 / (lam + kappa) ** 2)
    return float(kappa**2 * np.sum(lam * c**2 / (lam + kappa) ** 2) / (1.0 - t / n))


def tail_measure(n: int, theta_0: Any, theta_T: Any, cov: Covariance) -> float:
    """The hard-threshold version: ``sum_{i > n} lambda_i <v_i, delta>^2`` (eigenvalues sorted descending)."""
    c = cov.basis.T @ (as_f64(theta_T, "theta_T", 1) - as_f64(theta_0, "theta_0", 1))
    order = np.argsort(cov.eigs)[::-1]
    rest = order[n:]
    return float(np.sum(cov.eigs[rest] * c[rest] ** 2))


def deterministic_risk(n: int, theta_0: Any, theta_T: Any, cov: Covariance, noise: float = 0.0) -> float:
    """Deterministic equivalent of the expected risk of GD from ``theta_0``: ``S_n`` + variance."""
    lam = cov.eigs[cov.eigs > 0]
    kappa = unseen_scale(n, lam)
    t = float(np.sum(lam**2 / (lam + kappa) ** 2)) if kappa > 0 else float(lam.size)
    bias = similarity_measure(n, theta_0, theta_T, cov)
    if noise == 0:
        return bias
    return bias + (noise**2 * t / (n - t) if n > t else float("inf"))
