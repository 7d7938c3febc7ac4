"""The one quadratic problem that every LQF solver solves.

With the linearized model ``f_lin(x) = f0(x) + J(x) dw`` and targets ``t``
(scaled one-hot vectors), LQF minimises

    L(dw) = 1/(2N) sum_n ||f0(x_n) + J(x_n) dw - t_n||^2 + (lam/2) dw^T M dw,

a convex quadratic with the unique minimiser given by the normal equations

    (J^T J / N + lam M) dw = J^T r / N,        r = t - f0,

where ``J`` stacks the ``N`` per-sample Jacobians ``(C, P)`` and ``M`` is a
positive diagonal metric (one positive scalar per parameter tensor:
``M = I`` is plain ridge). Its Hessian ``H = J^T J / N + lam M`` does not
depend on ``dw``: the Gauss-Newton matrix is the exact curvature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lqf.linearization import LinearizedModel


class QuadraticProblem:
    """``L(dw)`` over the training inputs ``x`` (cached inputs of the linearized part).

    Args:
        model: the linearized model (its ``delta`` is not used: solvers pass ``dw``).
        inputs: ``(N, ...)`` inputs of ``model``.
        targets: ``(N, C)`` regression targets ``t``.
        lam: ridge strength ``lam >= 0``.
        metric: ``M`` as one positive scalar per linearized tensor (default all 1).
        batch_size: rows per jvp/vjp call (bounds memory, not the result).
    """

    def __init__(
        self,
        model: LinearizedModel,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        lam: float,
        metric: Sequence[float] | None = None,
        batch_size: int = 256,
    ) -> None:
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.model = model
        #: where the linearized model lives; ``inputs`` may stay elsewhere (e.g. on the CPU) and are
        #: moved one batch at a time, every vector of the problem lives here
        self.device = model.delta[0].device
        self.inputs = inputs
        self.targets = targets.to(self.device)
        self.lam = float(lam)
        self.batch_size = batch_size
        self.shapes = [d.shape for d in model.delta]
        self.sizes = [d.numel() for d in model.delta]
        m = [1.0] * len(self.sizes) if metric is None else [float(v) for v in metric]
        if len(m) != len(self.sizes) or min(m) <= 0:
            raise ValueError("metric needs one positive number per linearized tensor")
        self.dtype = model.delta[0].dtype
        self.metric = torch.cat(
            [
                torch.full((s,), v, dtype=self.dtype, device=self.device)
                for s, v in zip(self.sizes, m, strict=True)
            ]
        )
        with torch.no_grad():
            f0 = torch.cat([model.primal(b) for b in self._batches()])
        self.residual = (self.targets - f0).detach()

    @property
    def n(self) -> int:
        return self.inputs.shape[0]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def _batches(self):
        for i in range(0, self.n, self.batch_size):
            yield self.inputs[i : i + self.batch_size].to(self.device)

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat ``(P,)`` vector as tensors shaped like ``model.delta``."""
        return [p.reshape(s) for p, s in zip(torch.split(v, self.sizes), self.shapes, strict=True)]

    @staticmethod
    def flatten(ts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ts])

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` of shape ``(N, C)`` for a flat ``v``."""
        vs = self.unflatten(v)
        with torch.no_grad():
            return torch.cat([self.model.jvp(b, vs) for b in self._batches()])

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``J^T u`` (flat ``(P,)``) for ``u`` of shape ``(N, C)``."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for i, b in enumerate(self._batches()):
            ub = u[i * self.batch_size : i * self.batch_size + b.shape[0]]
            out += self.flatten(self.model.vjp(b, ub.to(b.dtype)))
        return out

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v = J^T J v / N + lam M v`` (one jvp and one vjp per batch)."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        vs = self.unflatten(v)
        for b in self._batches():
            with torch.no_grad():
                jv = self.model.jvp(b, vs)
            out += self.flatten(self.model.vjp(b, jv))
        return out / self.n + self.lam * self.metric * v

    def rhs(self) -> torch.Tensor:
        """``J^T r / N``: minus the gradient at ``dw = 0``."""
        return self.vjp(self.residual) / self.n

    def gradient(self, v: torch.Tensor) -> torch.Tensor:
        """``grad L(v) = H v - J^T r / N``."""
        return self.vjp(self.jvp(v) - self.residual) / self.n + self.lam * self.metric * v

    def loss(self, v: torch.Tensor) -> float:
        """``L(v)``."""
        err = self.jvp(v) - self.residual
        return float(0.5 * err.pow(2).sum() / self.n + 0.5 * self.lam * (self.metric * v * v).sum())


def hutchinson_trace(problem: QuadraticProblem, probes: int = 4, seed: int = 0) -> float:
    """Estimate of ``trace(J M^{-1} J^T)`` with Rademacher probes (one vjp over the data each)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(probes):
        u = (torch.randint(0, 2, problem.residual.shape, generator=g).float() * 2 - 1).to(problem.device)
        total += float((problem.vjp(u).pow(2) / problem.metric).sum())
    return total / probes
