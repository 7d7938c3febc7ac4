"""The Jacobian of training inputs whose rows are split across the processes of a ``torchrun`` run.

Under ``torchrun`` each process builds the factors (or streamed passes) of its own share of the
``N`` training inputs only, the rows ``rank, rank + W, ...`` (:func:`lqf.distributed.shard`), so
the forward and backward passes that make them are split ``W`` ways. A product that sums over
rows, ``J^T u`` or ``J^T J v``, is this process's share of the sum followed by one all-reduce of
the ``P`` linearized parameters; a product that returns rows, ``J v`` or the diagonal of the
kernel, gathers them back in order. Every process then holds what one process would, to float
rounding, and the multi-shift CG of :mod:`lqf.solvers.grid` runs unchanged on top: one all-reduce
of ``P`` numbers per product with ``J^T J``, counted in :data:`lqf.distributed.TRAFFIC`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lqf import distributed


class ShardedJacobian:
    """``J`` of ``n`` inputs, this process holding ``local``: the Jacobian of its share.

    Args:
        local: a :class:`~lqf.linearization.JacobianFactors` or
            :class:`~lqf.linearization.StreamedJacobian` of the rows :func:`lqf.distributed.shard`
            gives this process.
        n: ``N``, the rows of all processes together.
    """

    def __init__(self, local, n: int) -> None:
        self.local, self.n = local, n
        self.rows = distributed.shard(n)
        if len(self.rows) != local.n:
            raise ValueError(f"this process holds {local.n} rows; its share of {n} is {len(self.rows)}")
        self.classes, self.dtype, self.device = local.classes, local.dtype, local.device
        self.shapes = [d.shape for d in local.lin.delta]
        self.sizes = [d.numel() for d in local.lin.delta]
        #: ``f(x; w0)`` ``(N, C)`` of every row, in order
        self.outputs = distributed.gather_rows(local.outputs, n).to(local.outputs.device)

    def _summed(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([p.reshape(-1) for p in parts])
        distributed.all_reduce_sum(flat)
        return [p.reshape(s) for p, s in zip(torch.split(flat, self.sizes), self.shapes, strict=True)]

    def _rows(self, local: torch.Tensor) -> torch.Tensor:
        return distributed.gather_rows(local, self.n).to(local.device)

    @torch.no_grad()
    def jvp(self, v: Sequence[torch.Tensor]) -> torch.Tensor:
        """``J v`` ``(N, C)``."""
        return self._rows(self.local.jvp(v))

    @torch.no_grad()
    def vjp(self, u: torch.Tensor) -> list[torch.Tensor]:
        """``J^T u`` for ``u`` ``(N, C)``: this process's rows, summed over the processes."""
        return self._summed(self.local.vjp(u[self.rows.to(u.device)]))

    @torch.no_grad()
    def normal(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``J^T J v``: one all-reduce of ``P`` numbers."""
        return self._summed(self.local.normal(v))

    @torch.no_grad()
    def diagonal(self, metric: Sequence[float] | None = None) -> torch.Tensor:
        """The diagonal of ``J M^-1 J^T`` ``(N, C)``."""
        return self._rows(self.local.diagonal(metric))

    def nbytes(self) -> int:
        """Memory held by this process's factors."""
        return self.local.nbytes()
