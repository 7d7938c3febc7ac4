"""Exact leave-one-out, influence and forgetting for the ridge problems that linear runs solve.

Every linear run ends in a model ``f(x) = f0(x) + F(x) theta``, linear in its trained
parameters ``theta``, fitted by least squares on the targets ``t`` (``N`` examples of ``C``
rows each) with a quadratic penalty. For such a model removing training examples has closed
forms (block Sherman-Morrison-Woodbury), so nothing needs retraining:

* **LQF** (:class:`DualRidge`): ``theta = dw``, ``F = J`` (the Jacobian at ``w0``), penalty
  ``mu ||dw||_M^2`` with ``mu = N lam``; in the dual ``G = K + mu I``, ``K = J M^-1 J^T``,
  ``alpha = G^-1 r``, ``dw = M^-1 J^T alpha``. For example ``i`` (its ``C`` rows):
  the leave-one-out residual is ``t_i - f_{-i}(x_i) = [(G^-1)_ii]^-1 alpha_i``; the change of any
  output is ``f(x) - f_{-i}(x) = k(x, X) (G^-1)_{:,i} [(G^-1)_ii]^-1 alpha_i``; removing a set
  ``S`` gives ``alpha' = alpha - (G^-1)_{:,S} [(G^-1)_SS]^-1 alpha_S`` (zero on ``S``).
* **The probe** (:class:`ProbeRidge`): ``theta = (W, b)`` on features ``phi~ = [phi, 1]``, the
  same design for every class, penalty ``lam ||W||^2`` (the bias free): with
  ``A = Phi~^T Phi~ + lam diag(1, ..., 1, 0)`` and ``h_i = phi~_i^T A^-1 phi~_i``, the
  leave-one-out residual is ``e_i / (1 - h_i)``.
* **A fixed head's probe** (:class:`PrimalRidge`): ``theta = (alpha, b)``, row ``(i, c)`` has
  features ``[g_ic, e_c]``, penalty on the scale only; the block form ``(I - H_ii)^-1 e_i`` with
  ``H_ii = F_i A^-1 F_i^T``.

"The same problem without example ``i``" keeps everything but that example's rows fixed: the
linearization point ``w0`` (with the head fitted first on all examples, and any swapped
activations), the targets of the others, the metric ``M`` and the penalty on the parameters as
it stands in the summed objective (``mu = N lam`` for LQF, ``lam`` for the probes; the
relative value chosen on validation is not chosen again). Retraining that problem from scratch
gives these numbers exactly; ``tests/test_explain.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lqf.linearization.factors import JacobianFactors
from lqf.linearization.kernel import tangent_kernel


def _check_subset(n: int, indices: Sequence[int]) -> torch.Tensor:
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if idx.numel() == 0 or idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"indices must be distinct and in 0..{n - 1}")
    return idx


class DualRidge:
    """The LQF problem in the dual: ``alpha = (K + mu I)^-1 r`` over the training factors.

    Args:
        train: factors of the training inputs (at ``w0``; their ``outputs`` are ``f0``).
        targets: ``(N, C)`` regression targets ``t``.
        mu: the penalty ``N lam`` of the summed objective.
        metric: ``M`` as one scalar per linearized tensor (default all 1).
    """

    def __init__(
        self,
        train: JacobianFactors,
        targets: torch.Tensor,
        mu: float,
        metric: Sequence[float] | None = None,
    ) -> None:
        self.train, self.mu, self.metric = train, float(mu), metric
        self.n, self.classes = train.n, train.classes
        self.targets = targets.double().to(train.outputs.device)
        self.residual = (self.targets - train.outputs.double()).reshape(-1)
        kernel = tangent_kernel(train, metric=metric)
        rows = kernel.shape[0]
        kernel[torch.arange(rows), torch.arange(rows)] += self.mu
        factor, bad = torch.linalg.cholesky_ex(kernel)
        if int(bad):
            raise RuntimeError(f"K + {self.mu:.3g} I is not positive definite")
        self.kernel = kernel  # G = K + mu I
        self.alpha = torch.cholesky_solve(self.residual.unsqueeze(1), factor).squeeze(1)
        self.inverse = torch.cholesky_inverse(factor)  # G^-1
        del factor
        n, c = self.n, self.classes
        # the diagonal blocks (G^-1)_ii, (N, C, C)
        self.blocks = self.inverse.view(n, c, n, c).diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()

    # -------------------------------------------------------------------------- fitted model
    def delta(self, alpha: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``dw = M^-1 J^T alpha`` shaped like the model's ``delta``."""
        a = self.alpha if alpha is None else alpha
        out = self.train.vjp(a.reshape(self.n, self.classes).to(self.train.dtype))
        if self.metric is not None:
            out = [t / float(m) for t, m in zip(out, self.metric, strict=True)]
        return out

    def fitted(self) -> torch.Tensor:
        """``f(x_i)`` of the training inputs ``(N, C)``: ``t - mu alpha``."""
        return self.targets - self.mu * self.alpha.view(self.n, self.classes)

    # ----------------------------------------------------------------------- leave one out
    def loo_residuals(self) -> torch.Tensor:
        """``t_i - f_{-i}(x_i)`` for every example ``(N, C)``: ``[(G^-1)_ii]^-1 alpha_i``."""
        a = self.alpha.view(self.n, self.classes, 1)
        return torch.linalg.solve(self.blocks, a).squeeze(2)

    def loo_predictions(self) -> torch.Tensor:
        """``f_{-i}(x_i)`` ``(N, C)``: each training input predicted by the model trained without it."""
        return self.targets - self.loo_residuals()

    # ------------------------------------------------------------------ one test input
    def cross_kernel(self, test: JacobianFactors) -> torch.Tensor:
        """``k(x, X)`` ``(T C, N C)`` for test inputs ``x``."""
        return tangent_kernel(test, self.train, metric=self.metric)

    def influence(self, test: JacobianFactors) -> torch.Tensor:
        """``f(x) - f_{-i}(x)`` ``(T, N, C)``: how each training example moves each class score of
        each test input (positive: removing it lowers the score)."""
        k = self.cross_kernel(test)
        n, c = self.n, self.classes
        beta = self.loo_residuals()  # [(G^-1)_ii]^-1 alpha_i
        b = (k @ self.inverse).view(test.n, c, n, c)  # k(x, X) G^-1
        return torch.einsum("tonc,nc->tno", b, beta)

    def representer(self, test: JacobianFactors) -> torch.Tensor:
        """``f(x) - f(x; w0) = sum_i k(x, x_i) alpha_i``, per training example ``(T, N, C)``."""
        k = self.cross_kernel(test).view(test.n, self.classes, self.n, self.classes)
        return torch.einsum("tonc,nc->tno", k, self.alpha.view(self.n, self.classes))

    def posterior_variance(self, test: JacobianFactors) -> torch.Tensor:
        """``(T, C)`` variance of each class score per unit noise variance: the Bayesian linear
        regression ``t = f0 + J dw + eps``, ``dw ~ N(0, s^2 M^-1)``, ``eps ~ N(0, sigma^2 I)`` with
        ``sigma^2 / s^2 = mu`` has this ridge solution as its posterior mean, and
        ``Var f_c(x) = sigma^2 [k(x, x)_cc - k_c(x, X) G^-1 k_c(x, X)^T] / mu``."""
        k = self.cross_kernel(test)  # (T C, N C)
        reduce = ((k @ self.inverse) * k).sum(1).view(test.n, self.classes)
        prior = test.diagonal(self.metric)  # k(x, x)_cc
        return (prior - reduce).clamp_min(0.0) / self.mu

    # --------------------------------------------------------------------------- forgetting
    def forget(self, indices: Sequence[int]) -> torch.Tensor:
        """``alpha`` of the problem without the examples ``indices`` (zero on their rows): the
        Schur complement of their block of ``G^-1``."""
        idx = _check_subset(self.n, indices)
        c = self.classes
        rows = (idx.unsqueeze(1) * c + torch.arange(c)).reshape(-1)
        block = self.inverse[rows][:, rows]
        step = torch.linalg.solve(block, self.alpha[rows])
        alpha = self.alpha - self.inverse[:, rows] @ step
        alpha[rows] = 0.0
        return alpha


class ProbeRidge:
    """The ridge probe ``Y ~ Phi W + 1 b^T``, penalty ``lam ||W||^2``, in the primal.

    Args:
        features: ``Phi`` ``(N, D)``.
        targets: ``Y`` ``(N, C)``.
        lam: the absolute penalty.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, lam: float) -> None:
        self.phi = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
        self.targets = targets.double()
        self.lam = float(lam)
        self.n, self.classes = targets.shape
        self.inverse = torch.linalg.inv(self._gram(self.phi))  # A^-1
        self.weights = self.inverse @ (self.phi.T @ self.targets)  # (D + 1, C): [W; b]
        self.leverage = ((self.phi @ self.inverse) * self.phi).sum(1)  # h_i

    def _gram(self, phi: torch.Tensor) -> torch.Tensor:
        penalty = torch.full((phi.shape[1],), self.lam, dtype=torch.float64)
        penalty[-1] = 0.0
        return phi.T @ phi + torch.diag(penalty)

    def fitted(self) -> torch.Tensor:
        return self.phi @ self.weights

    def loo_residuals(self) -> torch.Tensor:
        return (self.targets - self.fitted()) / (1 - self.leverage).unsqueeze(1)

    def loo_predictions(self) -> torch.Tensor:
        return self.targets - self.loo_residuals()

    def _test(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)

    def influence(self, features: torch.Tensor) -> torch.Tensor:
        """``f(x) - f_{-i}(x)`` ``(T, N, C)`` for test features ``(T, D)``."""
        s = self._test(features) @ self.inverse @ self.phi.T  # (T, N)
        return s.unsqueeze(2) * self.loo_residuals().unsqueeze(0)

    def representer(self, features: torch.Tensor) -> torch.Tensor:
        """``f(x) = sum_i s_i(x) y_i``: each training example's share ``(T, N, C)``."""
        s = self._test(features) @ self.inverse @ self.phi.T
        return s.unsqueeze(2) * self.targets.unsqueeze(0)

    def posterior_variance(self, features: torch.Tensor) -> torch.Tensor:
        """``(T, C)`` variance of each class score per unit noise variance: with
        ``W ~ N(0, sigma^2 / lam)``, a flat prior on ``b`` and noise ``N(0, sigma^2)`` the ridge
        solution is the posterior mean and ``Var f_c(x) = sigma^2 phi~^T A^-1 phi~``, the same
        for every class."""
        phi = self._test(features)
        v = ((phi @ self.inverse) * phi).sum(1)
        return v.unsqueeze(1).expand(-1, self.classes).clone()

    def forget(self, indices: Sequence[int]) -> torch.Tensor:
        """``[W; b]`` ``(D + 1, C)`` of the problem without ``indices`` (a direct solve)."""
        keep = torch.ones(self.n, dtype=torch.bool)
        keep[_check_subset(self.n, indices)] = False
        phi = self.phi[keep]
        return torch.linalg.solve(self._gram(phi), phi.T @ self.targets[keep])


class PrimalRidge:
    """A small linear model with block rows: ``f_i = F_i theta`` (``F_i`` ``(C, p)``), fitted by
    least squares with the penalty ``theta^T P theta`` (``P`` positive semi-definite).

    Args:
        design: ``F`` ``(N, C, p)``.
        targets: ``(N, C)``.
        penalty: ``P`` ``(p, p)``.
    """

    def __init__(self, design: torch.Tensor, targets: torch.Tensor, penalty: torch.Tensor) -> None:
        self.design, self.targets, self.penalty = design.double(), targets.double(), penalty.double()
        self.n, self.classes, p = self.design.shape
        flat = self.design.reshape(-1, p)
        self.inverse = torch.linalg.inv(flat.T @ flat + self.penalty)
        self.theta = self.inverse @ (flat.T @ self.targets.reshape(-1))
        hat = torch.einsum("ncp,pq,ndq->ncd", self.design, self.inverse, self.design)
        self.blocks = torch.eye(self.classes, dtype=torch.float64) - hat  # I - H_ii

    def fitted(self) -> torch.Tensor:
        return self.design @ self.theta

    def loo_residuals(self) -> torch.Tensor:
        e = (self.targets - self.fitted()).unsqueeze(2)
        return torch.linalg.solve(self.blocks, e).squeeze(2)

    def loo_predictions(self) -> torch.Tensor:
        return self.targets - self.loo_residuals()

    def influence(self, design: torch.Tensor) -> torch.Tensor:
        """``f(x) - f_{-i}(x)`` ``(T, N, C)`` for test rows ``design`` ``(T, C, p)``."""
        left = torch.einsum("tcp,pq->tcq", design.double(), self.inverse)
        cross = torch.einsum("tcq,ndq->tncd", left, self.design)  # F(x) A^-1 F_i^T
        return torch.einsum("tncd,nd->tnc", cross, self.loo_residuals())

    def representer(self, design: torch.Tensor) -> torch.Tensor:
        left = torch.einsum("tcp,pq->tcq", design.double(), self.inverse)
        cross = torch.einsum("tcq,ndq->tncd", left, self.design)
        return torch.einsum("tncd,nd->tnc", cross, self.targets)

    def forget(self, indices: Sequence[int]) -> torch.Tensor:
        """``theta`` of the problem without ``indices``."""
        keep = torch.ones(self.n, dtype=torch.bool)
        keep[_check_subset(self.n, indices)] = False
        flat = self.design[keep].reshape(-1, self.design.shape[2])
        return torch.linalg.solve(flat.T @ flat + self.penalty, flat.T @ self.targets[keep].reshape(-1))
