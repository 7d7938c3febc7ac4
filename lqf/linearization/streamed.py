"""``J v`` and ``J^T u`` by passes over the data, holding nothing but the inputs.

:class:`StreamedJacobian` has the interface of
:class:`~lqf.linearization.factors.JacobianFactors` (``n``, ``classes``, ``outputs``,
``jvp``, ``vjp``, ``diagonal``) for inputs whose factors would not fit in memory: each product
runs the linearized model's forward-mode ``jvp`` or reverse-mode ``vjp`` over the inputs in
batches (:class:`~lqf.linearization.LinearizedModel`), and the diagonal of the kernel comes
from factors built one batch at a time and dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lqf.linearization.linear_model import LinearizedModel


class StreamedJacobian:
    """``J`` of ``lin`` on ``inputs`` as products over batches (nothing stored but ``f(x; w0)``).

    Args:
        lin: the linearized model.
        inputs: ``(N, ...)`` inputs of ``lin`` (may stay on the CPU; moved one batch at a time).
        batch_size: inputs per pass.
        on_batch: progress of the first pass (inputs done).
    """

    def __init__(
        self,
        lin: LinearizedModel,
        inputs: torch.Tensor,
        *,
        batch_size: int = 128,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.lin, self.inputs, self.batch_size = lin, inputs, batch_size
        self.n = inputs.shape[0]
        self.device = lin.delta[0].device
        self.dtype = lin.delta[0].dtype
        outs = []
        with torch.no_grad():
            for lo, x in self._batches():
                outs.append(lin.primal(x))
                if on_batch is not None:
                    on_batch(min(lo + batch_size, self.n))
        self.outputs = torch.cat(outs)
        self.classes = self.outputs.shape[1]
        self._diagonal: dict[tuple, torch.Tensor] = {}

    def _batches(self):
        for lo in range(0, self.n, self.batch_size):
            yield lo, self.inputs[lo : lo + self.batch_size].to(self.device, self.dtype)

    @torch.no_grad()
    def jvp(self, v: Sequence[torch.Tensor]) -> torch.Tensor:
        """``J v`` ``(N, C)``."""
        return torch.cat([self.lin.jvp(x, v) for _, x in self._batches()])

    def vjp(self, u: torch.Tensor) -> list[torch.Tensor]:
        """``J^T u`` shaped like ``lin.delta``."""
        out = [torch.zeros_like(d) for d in self.lin.delta]
        for lo, x in self._batches():
            for acc, piece in zip(out, self.lin.vjp(x, u[lo : lo + x.shape[0]].to(x.dtype)), strict=True):
                acc += piece
        return out

    def normal(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``J^T J v``: a jvp and a vjp per batch."""
        out = [torch.zeros_like(d) for d in self.lin.delta]
        for _, x in self._batches():
            with torch.no_grad():
                u = self.lin.jvp(x, v)
            for acc, piece in zip(out, self.lin.vjp(x, u), strict=True):
                acc += piece
        return out

    def diagonal(self, metric: Sequence[float] | None = None) -> torch.Tensor:
        """The diagonal of ``J M^-1 J^T`` ``(N, C)`` (factors one batch at a time)."""
        key = tuple(metric) if metric is not None else None
        if key not in self._diagonal:
            from lqf.linearization.factors import JacobianFactors

            parts = []
            for _, x in self._batches():
                parts.append(JacobianFactors(self.lin, x, batch_size=x.shape[0]).diagonal(metric))
            self._diagonal[key] = torch.cat(parts)
        return self._diagonal[key]

    def nbytes(self) -> int:
        """Memory held beyond the inputs (the outputs ``f(x; w0)``)."""
        return self.outputs.numel() * self.outputs.element_size()
