"""K-FAC for the linearized model: the Gauss-Newton matrix as Kronecker factors.

For the LQF loss the curvature is the Gauss-Newton matrix ``J^T J / N``, the
same at every ``dw`` (the model is linear in ``dw``), so it is computed once at
``w0``. For a ``Conv2d`` or ``Linear`` layer with weight ``W`` (``(out, in)``;
a convolution's weight flattened to ``(out, in/groups * kh * kw)`` per group)
and bias folded in as an extra input equal to 1, the per-sample gradient of
output ``c`` is ``sum_t g_{n,c,t} a_{n,t}^T`` (``t`` runs over spatial
positions, ``a`` are the unfolded input patches, ``g`` the gradients of
``f_c`` with respect to the layer's outputs). K-FAC ("expand" variant, as in
Grosse & Martens 2016 for convolutions) approximates

    sum_{n,c} vec(grad) vec(grad)^T  ~=  G (x) A,
    A = 1/(N T) sum_{n,t} a a^T,        G = sum_{n,c,t} g g^T,

which is exact for one sample of a ``Linear`` layer. The block of the
Hessian ``H = J^T J / N + lam M`` is ``(G (x) A) / N + lam m I``. Grouped and
depthwise convolutions get one pair of factors per group. Every other
linearized tensor (BatchNorm scales and shifts ...) gets the exact diagonal
of ``J^T J / N`` (per-sample Jacobians of those small tensors).

Applying ``(H_kfac + damping I)^{-1}`` uses the eigendecompositions
``A = Q_A diag(e_A) Q_A^T``, ``G = Q_G diag(e_G) Q_G^T``:

    V -> Q_G [(Q_G^T V Q_A) / (e_G e_A^T / N + lam m + damping)] Q_A^T,

the exact inverse of the damped Kronecker product (no factored damping).

Under ``torchrun`` each process accumulates ``A``, ``G`` and the diagonal over its share of the
rows and one all-reduce per factor sums them, so every process holds the one-process factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lqf import distributed
from lqf.linearization import LinearizedModel


@dataclass
class _Block:
    """Kronecker factors of one layer: ``A`` ``(groups, da, da)``, ``G`` ``(groups, dg, dg)``."""

    module: nn.Module
    weight: int  # index into model.names
    bias: int | None
    groups: int
    A: torch.Tensor
    G: torch.Tensor
    count: int = 0  # rows accumulated into A (N * T)
    eA: torch.Tensor | None = None
    QA: torch.Tensor | None = None
    eG: torch.Tensor | None = None
    QG: torch.Tensor | None = None


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer inputs as rows ``(B, T, in_per_group * k)`` per group: ``(groups, B*T, d)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if type(module).__name__ == "Conv2dSame":  # timm's TF "same" padding is applied in forward
        from timm.layers import pad_same

        x = pad_same(x, module.kernel_size, module.stride, module.dilation)
        padding = 0
    else:
        if isinstance(module.padding, str):
            raise ValueError(f"K-FAC does not support padding={module.padding!r}")
        padding = module.padding
    cols = nn.functional.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride
    )  # (B, in * kh * kw, T), channel-major
    b, d, t = cols.shape
    g = module.groups
    return cols.reshape(b, g, d // g, t).permute(1, 0, 3, 2).reshape(g, b * t, d // g)


def _out_rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """Output gradients as rows ``(groups, B*T, out_per_group)``."""
    if isinstance(module, nn.Linear):
        return grad.reshape(1, -1, grad.shape[-1])
    b, o = grad.shape[:2]
    g = module.groups
    return grad.reshape(b, g, o // g, -1).permute(1, 0, 3, 2).reshape(g, -1, o // g)


class KFAC:
    """K-FAC approximation of ``H = J^T J / N + lam M`` for a :class:`LinearizedModel`.

    Args:
        model: the linearized model; its linearized ``Conv2d``/``Linear``
            weights get Kronecker factors, the rest an exact diagonal.
        inputs: ``(N, ...)`` training inputs of ``model``.
        batch_size: rows per pass (memory only).

    After construction, :meth:`inverse` applies ``(H_kfac + damping I)^{-1}``
    to flat vectors (the layout of :class:`~lqf.solvers.QuadraticProblem`).
    """

    def __init__(self, model: LinearizedModel, inputs: torch.Tensor, batch_size: int = 64) -> None:
        self.model = model
        self.dtype = model.delta[0].dtype
        #: the factors live with the model; ``inputs`` are moved one batch at a time
        self.device = model.delta[0].device
        self.n = inputs.shape[0]
        self.sizes = [d.numel() for d in model.delta]
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.blocks = self._find_blocks()
        covered = {b.weight for b in self.blocks} | {b.bias for b in self.blocks if b.bias is not None}
        self.diagonal_index = [i for i in range(len(self.sizes)) if i not in covered]
        self.diagonal = [
            torch.zeros(self.sizes[i], dtype=self.dtype, device=self.device) for i in self.diagonal_index
        ]
        # under torchrun each process accumulates its share of the rows; the sums are all-reduced
        mine = inputs[distributed.shard(self.n)] if distributed.active() else inputs
        sent = distributed.TRAFFIC["all_reduce_bytes"]
        for i in range(0, len(mine), batch_size):
            self._accumulate(mine[i : i + batch_size].to(self.device))
        if distributed.active():
            for b in self.blocks:
                distributed.all_reduce_sum(b.A)
                distributed.all_reduce_sum(b.G)
                b.count = int(
                    distributed.all_reduce_sum(
                        torch.tensor([b.count], dtype=torch.float64, device=self.device)
                    ).item()
                )
            for d in self.diagonal:
                distributed.all_reduce_sum(d)
        #: bytes this process all-reduced for the factors (0 in one process)
        self.all_reduce_bytes = distributed.TRAFFIC["all_reduce_bytes"] - sent
        for b in self.blocks:
            b.A /= max(b.count, 1)
            b.eA, b.QA = torch.linalg.eigh(b.A.double())
            b.eG, b.QG = torch.linalg.eigh(b.G.double())
            b.eA.clamp_(min=0)
            b.eG.clamp_(min=0)
        self.diagonal = [d / self.n for d in self.diagonal]

    def _find_blocks(self) -> list[_Block]:
        index = {n: i for i, n in enumerate(self.model.names)}
        blocks = []
        for name, module in self.model.module.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            w = index.get(f"{name}.weight" if name else "weight")
            if w is None:
                continue
            b = index.get(f"{name}.bias" if name else "bias") if module.bias is not None else None
            groups = module.groups if isinstance(module, nn.Conv2d) else 1
            out = module.weight.shape[0] // groups
            da = module.weight[0].numel() + (b is not None)
            blocks.append(
                _Block(
                    module,
                    w,
                    b,
                    groups,
                    torch.zeros(groups, da, da, dtype=self.dtype, device=self.device),
                    torch.zeros(groups, out, out, dtype=self.dtype, device=self.device),
                )
            )
        return blocks

    def _accumulate(self, x: torch.Tensor) -> None:
        saved: dict[int, torch.Tensor] = {}
        grads: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(self.blocks))}
        handles = []
        for k, b in enumerate(self.blocks):

            def fwd(module, inp, out, k=k):
                saved[k] = inp[0].detach()
                out.register_hook(lambda g, k=k: grads[k].append(g.detach()))

            handles.append(b.module.register_forward_hook(fwd))
        model = self.model
        params = dict(model.module.named_parameters())
        diag_params = [params[model.names[i]] for i in self.diagonal_index]
        try:
            for p in diag_params:
                p.requires_grad_(True)
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)  # makes every layer output part of the graph
                out = model.module(leaf)
            c = out.shape[1]
            for ci in range(c):
                torch.autograd.grad(out[:, ci].sum(), [leaf], retain_graph=True)
        finally:
            for h in handles:
                h.remove()
            for p in diag_params:
                p.requires_grad_(False)
        for k, b in enumerate(self.blocks):
            a = _patches(b.module, saved[k])
            if b.bias is not None:
                a = torch.cat([a, a.new_ones(a.shape[0], a.shape[1], 1)], dim=2)
            b.A += a.transpose(1, 2) @ a
            b.count += a.shape[1]
            for g in grads[k]:
                rows = _out_rows(b.module, g)
                b.G += rows.transpose(1, 2) @ rows
        if self.diagonal_index:
            from lqf.linearization.jacobian import jacobian

            jac = jacobian(model, x, self.diagonal_index)  # (B, C, P_diag)
            sq = jac.pow(2).sum(dim=(0, 1))
            for j, part in enumerate(torch.split(sq, [self.sizes[i] for i in self.diagonal_index])):
                self.diagonal[j] += part

    def _views(self, b: _Block, v: torch.Tensor) -> torch.Tensor:
        """The layer's part of flat ``v`` as ``(groups, out_per_group, da)``."""
        w = v[self.offsets[b.weight] : self.offsets[b.weight + 1]]
        out = b.G.shape[1]
        mat = w.reshape(b.groups, out, -1)
        if b.bias is not None:
            bias = v[self.offsets[b.bias] : self.offsets[b.bias + 1]].reshape(b.groups, out, 1)
            mat = torch.cat([mat, bias], dim=2)
        return mat

    def _write(self, b: _Block, v: torch.Tensor, mat: torch.Tensor) -> None:
        if b.bias is not None:
            v[self.offsets[b.bias] : self.offsets[b.bias + 1]] = mat[:, :, -1].reshape(-1)
            mat = mat[:, :, :-1]
        v[self.offsets[b.weight] : self.offsets[b.weight + 1]] = mat.reshape(-1)

    def inverse(
        self, v: torch.Tensor, damping: float, lam: float = 0.0, metric: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(H_kfac + damping I)^{-1} v`` with ``H_kfac = kfac(J^T J / N) + lam M``.

        ``metric``: the flat diagonal of ``M`` (constant within each tensor; default 1).
        """
        out = torch.empty_like(v)
        m = torch.ones_like(v) if metric is None else metric
        for b in self.blocks:
            mat = self._views(b, v).double()
            shift = lam * float(m[self.offsets[b.weight]]) + damping
            z = b.QG.transpose(1, 2) @ mat @ b.QA
            z = z / (b.eG[:, :, None] * b.eA[:, None, :] / self.n + shift)
            self._write(b, out, (b.QG @ z @ b.QA.transpose(1, 2)).to(v.dtype))
        for i, d in zip(self.diagonal_index, self.diagonal, strict=True):
            sl = slice(self.offsets[i], self.offsets[i + 1])
            out[sl] = v[sl] / (d + lam * m[sl] + damping)
        return out

    def dense(self) -> torch.Tensor:
        """The K-FAC matrix ``kfac(J^T J / N)`` as a dense ``(P, P)`` matrix (tests, tiny models)."""
        p = self.offsets[-1]
        h = torch.zeros(p, p, dtype=torch.float64, device=self.device)
        for b in self.blocks:
            # columns of the layer in the flat layout, in (group, out, in [+bias]) order
            idx = torch.arange(p, device=self.device)
            cols = self._views(b, idx.double()).long()
            for g in range(b.groups):
                block = torch.kron(b.G[g].double(), b.A[g].double()) / self.n
                flat = cols[g].reshape(-1)
                h[flat[:, None], flat[None, :]] = block
        for i, d in zip(self.diagonal_index, self.diagonal, strict=True):
            r = torch.arange(self.offsets[i], self.offsets[i + 1], device=self.device)
            h[r, r] = d.double()
        return h

    def mean_eigenvalue(self) -> float:
        """``trace(kfac(J^T J / N)) / P``: the scale that damping is measured in."""
        total = sum(float((b.eG.sum(1) * b.eA.sum(1)).sum()) / self.n for b in self.blocks) + sum(
            float(d.sum()) for d in self.diagonal
        )
        return total / self.offsets[-1]
