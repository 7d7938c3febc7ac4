"""Fine-tuning a linear model by gradient descent: closed forms, a simulator and the risk.

Setting (Shachaf, Brutzkus & Globerson, "A Theoretical Analysis of Fine-tuning with
Linear Teachers", NeurIPS 2021): target labels come from a linear teacher,
``y = X theta_T + eps`` with ``eps ~ N(0, sigma^2 I_n)``; the model starts at the source
solution ``theta_S`` and minimises the squared loss ``L(theta) = ||X theta - y||^2 / (2n)``.

Gradient descent (or flow) from ``theta_0`` only moves inside ``theta_0 + rowspace(X)``,
so it converges to the least-squares solution closest to ``theta_0``::

    theta_hat = theta_0 + X^+ (y - X theta_0)

(for ``n < d`` with full row rank: the interpolant closest to ``theta_0``).
``theta_0 = theta_S`` is fine-tuning, ``theta_0 = 0`` training from scratch.

Every function takes a feature matrix ``X`` of shape ``(n, d)`` as a NumPy array or a
PyTorch tensor (for instance tangent features of a network), computes in float64 and
returns vectors in the type of ``X``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lqf.errors import LqfError
from lqf.theory._arrays import as_f64, check_problem, like


def closest_interpolant(X: Any, y: Any, theta0: Any) -> Any:
    """The limit of gradient descent on ``||X theta - y||^2`` started at ``theta0``.

    ``theta_hat = theta0 + X^+ (y - X theta0)``: ``X`` (n, d), ``y`` (n,), ``theta0`` (d,).

    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> closest_interpolant(X, np.array([2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    array([2., 3., 1.])
    """
    Xa, ya, ta = check_problem(X, y, theta0)
    step, *_ = np.linalg.lstsq(Xa, ya - Xa @ ta, rcond=None)
    return like(ta + step, X)


@dataclass
class GDResult:
    """Outcome of :func:`gradient_descent`: final ``theta`` (d,), steps taken, final gradient norm."""

    theta: Any
    steps: int
    grad_norm: float
    converged: bool


def gradient_descent(
    X: Any,
    y: Any,
    theta0: Any,
    *,
    lr: float | None = None,
    tol: float = 1e-13,
    max_steps: int = 200_000,
) -> GDResult:
    """Full-batch gradient descent on ``L(theta) = ||X theta - y||^2 / (2n)`` from ``theta0``.

    ``theta_{t+1} = theta_t - lr * X^T (X theta_t - y) / n``; the default ``lr`` is
    ``1 / lambda_max(X^T X / n)`` (stable: below ``2 / lambda_max``). Stops when
    ``||grad|| <= tol * max(1, ||X^T y|| / n)``.
    """
    Xa, ya, ta = check_problem(X, y, theta0)
    n = Xa.shape[0]
    top = np.linalg.norm(Xa, 2) ** 2 / n
    if top == 0:
        return GDResult(like(ta.copy(), X), 0, 0.0, True)
    lr = 1.0 / top if lr is None else float(lr)
    if not 0 < lr < 2.0 / top:
        raise LqfError(f"lr={lr:g} is unstable for these features; use 0 < lr < {2.0 / top:.4g}")
    scale = tol * max(1.0, np.linalg.norm(Xa.T @ ya) / n)
    theta = ta.copy()
    grad_norm = np.inf
    for step in range(max_steps):
        grad = Xa.T @ (Xa @ theta - ya) / n
        grad_norm = float(np.linalg.norm(grad))
        if grad_norm <= scale:
            return GDResult(like(theta, X), step, grad_norm, True)
        theta -= lr * grad
    return GDResult(like(theta, X), max_steps, grad_norm, False)


def ridge_towards(X: Any, y: Any, theta0: Any, lam: float) -> Any:
    """Ridge regression shrunk towards ``theta0``.

    Minimises ``||X theta - y||^2 / (2n) + lam / 2 * ||theta - theta0||^2``::

        theta = theta0 + X^T (X X^T + n lam I)^{-1} (y - X theta0)

    ``lam -> 0`` gives :func:`closest_interpolant`.
    """
    if not lam > 0:
        raise LqfError(f"ridge penalty lam={lam!r} must be positive")
    Xa, ya, ta = check_problem(X, y, theta0)
    n = Xa.shape[0]
    coef = np.linalg.solve(Xa @ Xa.T + n * lam * np.eye(n), ya - Xa @ ta)
    return like(ta + Xa.T @ coef, X)


def loo_errors(X: Any, y: Any, theta0: Any, lams: Any) -> np.ndarray:
    """Exact leave-one-out mean squared error of :func:`ridge_towards` for each penalty in ``lams``.

    The penalty is held at ``n * lam`` (its value on all ``n`` samples) when a sample is
    left out. With ``X X^T = U diag(s^2) U^T`` the hat matrix of the residual fit is
    ``H = U diag(s^2 / (s^2 + n lam)) U^T`` and the leave-one-out residual of sample ``i``
    is ``(r_i - (H r)_i) / (1 - H_ii)`` with ``r = y - X theta0``. Returns (len(lams),).
    """
    Xa, ya, ta = check_problem(X, y, theta0)
    n = Xa.shape[0]
    if n < 2:
        raise LqfError("leave-one-out needs at least 2 samples")
    grid = as_f64(lams, "lams", 1)
    if np.any(grid <= 0):
        raise LqfError("ridge penalties must be positive")
    s2, U = np.linalg.eigh(Xa @ Xa.T)  # X X^T = U diag(s^2) U^T (cheaper than an SVD of X)
    s2 = np.clip(s2, 0.0, None)
    r = ya - Xa @ ta
    shrink = s2 / (s2 + n * grid[:, None])  # (grid, n)
    fits = (shrink * (U.T @ r)) @ U.T  # (grid, n)
    hdiag = shrink @ (U**2).T  # (grid, n)
    loo = (r - fits) / np.maximum(1.0 - hdiag, 1e-15)
    return np.mean(loo**2, axis=1)


def ridge_loo(X: Any, y: Any, theta0: Any, lams: Any | None = None) -> tuple[float, Any]:
    """Ridge towards ``theta0`` with the penalty chosen by exact leave-one-out error.

    Uses only the training samples. Returns ``(lam, theta)``; the grid defaults to 41 values
    log-spaced over ``[1e-6, 1e3]`` times the mean eigenvalue of ``X^T X / n``.
    """
    Xa = as_f64(X, "X", 2)
    if lams is None:
        mean_eig = float(np.sum(Xa**2) / Xa.shape[0] / Xa.shape[1]) or 1.0
        lams = np.logspace(-6, 3, 41) * mean_eig
    grid = as_f64(lams, "lams", 1)
    lam = float(grid[int(np.argmin(loo_errors(X, y, theta0, grid)))])
    return lam, ridge_towards(X, y, theta0, lam)


def sigma_matrix(sigma: Any | None, d: int) -> np.ndarray:
    """The covariance as a (d, d) matrix from ``None`` (identity), a (d,) diagonal or a (d, d) matrix."""
    if sigma is None:
        return np.eye(d)
    s = as_f64(sigma, "Sigma")
    if s.ndim == 1 and s.shape[0] == d:
        return np.diag(s)
    if s.shape == (d, d):
        return s
    raise LqfError(f"Sigma must be None, ({d},) or ({d}, {d}); got shape {tuple(s.shape)}")


def population_risk(theta: Any, theta_T: Any, sigma: Any | None = None) -> float:
    """Excess population risk ``||Sigma^{1/2} (theta - theta_T)||^2 = E_x (x.theta - x.theta_T)^2``.

    ``x ~ (0, Sigma)``; ``sigma`` is ``None`` (identity), a (d,) diagonal or a (d, d) matrix.
    The risk of a noisy test label adds ``sigma_noise^2``, which is not included.
    """
    diff = as_f64(theta, "theta", 1) - as_f64(theta_T, "theta_T", 1)
    return float(diff @ sigma_matrix(sigma, diff.shape[0]) @ diff)


def conditional_risk(
    X: Any, theta0: Any, theta_T: Any, sigma: Any | None = None, noise: float = 0.0
) -> tuple[float, float]:
    """``E_eps`` of the excess risk of :func:`closest_interpolant` for fixed features ``X``.

    With ``P = X^+ X`` (projection onto the row space) and ``delta = theta_T - theta0``::

        theta_hat - theta_T = -(I - P) delta + X^+ eps
        E_eps risk = ||Sigma^{1/2} (I - P) delta||^2  +  noise^2 tr(Sigma X^+ X^{+T})
                     \\_______ bias _______________/     \\_______ variance ________/

    Returns ``(bias, variance)``.
    """
    Xa = as_f64(X, "X", 2)
    d = Xa.shape[1]
    delta = as_f64(theta_T, "theta_T", 1) - as_f64(theta0, "theta0", 1)
    pinv = np.linalg.pinv(Xa)  # (d, n)
    unseen = delta - pinv @ (Xa @ delta)
    sig = sigma_matrix(sigma, d)
    bias = float(unseen @ sig @ unseen)
    variance = float(noise**2 * np.trace(pinv.T @ sig @ pinv))
    return bias, variance
