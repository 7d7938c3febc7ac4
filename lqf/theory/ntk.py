"""Two-layer ReLU networks in the NTK regime: fine-tuning from source weights vs from scratch.

The network (NTK parametrisation, no biases) is::

    f(x) = a^T relu(W x) / sqrt(m),    W (m, d),  a (m,)

initialised antisymmetrically (units ``j`` and ``j + m/2`` share ``w_j`` and have opposite
``a_j``), so ``f_0 = 0``. With ``m`` large, gradient descent on the squared loss moves the
weights little and trains the linearised model; started at weights ``(W_0, a_0)`` with
``n`` samples it converges to kernel regression with the *empirical NTK* at those weights::

    K(x, x') = [ relu(W x) . relu(W x') + (x . x') sum_j a_j^2 1[w_j.x > 0] 1[w_j.x' > 0] ] / m
    f_hat(x) = f_0(x) + K(x, X) K(X, X)^{-1} (y - f_0(X))

Fine-tuning starts from weights trained on the source task (``f_0 = f_S``), training from
scratch from the random initialisation. Both are compared with actual gradient descent of
the wide network. Float64 NumPy throughout (faster than PyTorch at these sizes on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lqf.errors import LqfError


@dataclass
class TwoLayer:
    """Weights of ``f(x) = a^T relu(W x) / sqrt(m)``: ``W`` (m, d), ``a`` (m,), float64."""

    W: np.ndarray
    a: np.ndarray

    @classmethod
    def init(cls, d: int, m: int, seed: int = 0) -> TwoLayer:
        """Antisymmetric random initialisation: ``w_j ~ N(0, I/d)``, ``a_j = +-1`` in pairs; ``f = 0``."""
        if m < 2 or m % 2:
            raise LqfError(f"width m={m} must be an even number >= 2")
        if d < 1:
            raise LqfError(f"input dimension d={d} must be positive")
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((m // 2, d)) / np.sqrt(d)
        a = rng.choice([-1.0, 1.0], size=m // 2)
        return cls(np.concatenate([W, W]), np.concatenate([a, -a]))

    @property
    def m(self) -> int:
        return int(self.a.shape[0])

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Outputs (n,) for inputs ``X`` (n, d)."""
        return np.maximum(X @ self.W.T, 0.0) @ self.a / np.sqrt(self.m)

    def flat(self) -> np.ndarray:
        """Parameters as one vector ``[vec(W) (row-major), a]`` of length ``m d + m``."""
        return np.concatenate([self.W.ravel(), self.a])

    @classmethod
    def unflat(cls, theta: np.ndarray, m: int, d: int) -> TwoLayer:
        return cls(theta[: m * d].reshape(m, d).copy(), theta[m * d :].copy())


def jacobian(net: TwoLayer, X: np.ndarray) -> np.ndarray:
    """Dense Jacobian ``d f(x_i) / d theta`` (n, m d + m) in the order of :meth:`TwoLayer.flat`."""
    pre = X @ net.W.T  # (n, m)
    root = np.sqrt(net.m)
    dW = ((pre > 0) * net.a)[:, :, None] * X[:, None, :] / root  # (n, m, d)
    da = np.maximum(pre, 0.0) / root
    return np.concatenate([dW.reshape(X.shape[0], -1), da], axis=1)


def empirical_ntk(net: TwoLayer, X1: np.ndarray, X2: np.ndarray) -> np.ndarray:
    """``K(X1, X2) = J(X1) J(X2)^T`` (n1, n2) in closed form, without building the Jacobian."""
    p1, p2 = X1 @ net.W.T, X2 @ net.W.T
    s1, s2 = (p1 > 0) * net.a, (p2 > 0) * net.a
    return (np.maximum(p1, 0.0) @ np.maximum(p2, 0.0).T + (X1 @ X2.T) * (s1 @ s2.T)) / net.m


def kernel_fit(
    net: TwoLayer, X: np.ndarray, y: np.ndarray, Xtest: np.ndarray, start: TwoLayer | None = None
) -> np.ndarray:
    """Predictions (n_test,) of the network linearised at ``net``, trained to convergence on ``(X, y)``.

    ``f_hat = f_0 + K(., X) K(X, X)^{-1} (y - f_0(X))`` with the kernel of ``net`` and the
    starting function ``f_0`` of ``start`` (default: ``net`` itself).
    """
    f0 = net if start is None else start
    coef = np.linalg.solve(empirical_ntk(net, X, X), y - f0(X))
    return f0(Xtest) + empirical_ntk(net, Xtest, X) @ coef


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the trained network, steps taken and the final training loss."""

    net: TwoLayer
    steps: int
    loss: float


def train(
    net: TwoLayer,
    X: np.ndarray,
    y: np.ndarray,
    *,
    lr: float | None = None,
    steps: int = 2000,
    tol: float = 1e-10,
) -> TrainResult:
    """Full-batch gradient descent on ``||f(X) - y||^2 / (2n)`` from ``net`` (not modified).

    Gradients in closed form: with ``r = (f(X) - y) / n`` and ``P = X W^T``,
    ``dL/da = relu(P)^T r / sqrt(m)`` and ``dL/dW = ((1[P > 0] * a) * r)^T X / sqrt(m)``.
    The default step is ``1 / lambda_max(K(X, X) / n)``; stops when the loss is below
    ``tol * mean(y^2)`` or after ``steps``.
    """
    n = X.shape[0]
    if n == 0:
        raise LqfError("no training samples; pass n >= 1")
    if lr is None:
        lr = 1.0 / float(np.linalg.eigvalsh(empirical_ntk(net, X, X) / n)[-1])
    W, a = net.W.copy(), net.a.copy()
    root = np.sqrt(net.m)
    target = tol * float(np.mean(y**2))
    loss = float("inf")
    step = 0
    for step in range(steps + 1):
        pre = X @ W.T
        act = np.maximum(pre, 0.0)
        resid = act @ a / root - y
        loss = 0.5 * float(resid @ resid) / n
        if loss <= target or step == steps:
            break
        r = resid / n
        ga = act.T @ r / root
        gW = (((pre > 0) * a) * r[:, None]).T @ X / root
        W -= lr * gW
        a -= lr * ga
    return TrainResult(TwoLayer(W, a), step, loss)
