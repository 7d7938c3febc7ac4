"""The Jacobian of a linearized model in factored form, per layer, without the dense matrix.

For the linearized model ``f_lin(x) = f(x; w0) + J(x) dw`` (:class:`LinearizedModel`), the
rows of ``J`` for an input ``x`` and an output class ``c`` are the gradients
``d f_c(x) / d w``. For a layer ``y_s = W a_s (+ b)`` applied at positions ``s`` (the
spatial positions of a convolution, its input patches ``a_s``; the tokens of a ``Linear`` on
``(B, T, I)``; one position otherwise) the chain rule gives the exact outer-product form

    d f_c(x) / d W = sum_s g_{c,s} a_s^T,        d f_c(x) / d b = sum_s g_{c,s},

with ``g_{c,s} = d f_c / d y_s`` the cotangent of the layer's output. Grouped and depthwise
convolutions factor per group. For an elementwise affine normalisation ``y = gamma * xhat + beta``
(BatchNorm in eval mode, LayerNorm, GroupNorm) the rows are ``sum_s g_s * xhat_s`` and
``sum_s g_s``. So ``J`` is known from each layer's inputs ``a`` (one forward pass) and output
cotangents ``g`` for all ``C`` classes (one backward pass, batched over the classes with
``vmap``): the "structured derivatives" of Novak, Sohl-Dickstein and Schoenholz, "Fast Finite
Width Neural Tangent Kernel", ICML 2022. Parameters of any other module get their rows from
per-sample ``jacrev`` (:func:`lqf.linearization.jacobian.jacobian`), exactly as before.

Each layer keeps either its factors ``(a, g)`` or its dense rows, whichever makes the kernel
``J M^-1 J^T`` cheaper (``S^2 (O + 1)`` against ``O I`` per pair of rows, ``S`` positions):
the late 1x1 convolutions and the head keep factors, depthwise convolutions and norms dense
rows. :class:`JacobianFactors` gives ``J v``, ``J^T u`` and the dense ``J`` (the exact, slow
twin the tests hold it to); :func:`lqf.linearization.kernel.tangent_kernel` the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import vjp, vmap

from lqf.linearization.linear_model import LinearizedModel
from lqf.linearization.sites import (
    AFFINE,
    DENSE,
    STRUCT,
    find_sites,
    kernel_cost,
    norm_act,
    patches,
    positions,
    xhat,
)


class JacobianFactors:
    """``J`` of ``lin`` on ``inputs`` (``N`` rows of ``C`` classes) in factored form.

    Args:
        lin: the linearized model (at ``w0``: its ``delta`` is not used).
        inputs: ``(N, ...)`` inputs of ``lin`` (e.g. the cached prefix outputs).
        batch_size: inputs per forward/backward pass (bounds the temporary memory).
        dense: force dense rows for every layer (the kernel's exact, slow twin for tests).
        on_batch: called with the number of inputs done after each batch (progress).

    Attributes:
        blocks: per site, ``("struct", a, g)`` with ``a`` ``(N, S, groups, K)`` and ``g``
            ``(N, C, S, groups, O/groups)``, or ``("dense", D)`` with ``D`` ``(N, C, P_site)``
            (the site's tensors flattened and concatenated in ``delta`` order).
    """

    def __init__(
        self,
        lin: LinearizedModel,
        inputs: torch.Tensor,
        *,
        batch_size: int = 64,
        dense: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.lin = lin
        self.sites = find_sites(lin)
        self.n = inputs.shape[0]
        self.device = lin.delta[0].device
        self.dtype = lin.delta[0].dtype
        self.sizes = [d.numel() for d in lin.delta]
        self.shapes = [d.shape for d in lin.delta]
        self.classes = None
        self.force_dense = dense
        self.blocks: list[tuple] = []
        outputs = []
        #: why every module's rows came from per-sample ``jacrev`` (``None``: they did not)
        self.fallback_reason: str | None = None
        for lo in range(0, self.n, batch_size):
            x = inputs[lo : lo + batch_size].to(self.device, self.dtype)
            blocks = self._batch(x, outputs)
            if lo == 0 and not self._agrees(x, blocks):
                # a weight used outside its module's call (or a layer the rules misread): the
                # factors would be wrong, so take every module's rows from jacrev instead
                self.fallback_reason = "the factored J v did not match jvp on the first batch"
                for site in self.sites:
                    site.fallback = True
                outputs.clear()
                blocks = self._batch(x, outputs)
            if lo == 0:  # the whole factors, allocated once and filled batch by batch
                self.blocks = [(b[0], *[t.new_empty((self.n, *t.shape[1:])) for t in b[1:]]) for b in blocks]
            for whole, part in zip(self.blocks, blocks, strict=True):
                for dst, src in zip(whole[1:], part[1:], strict=True):
                    dst[lo : lo + src.shape[0]] = src
            if on_batch is not None:
                on_batch(min(lo + batch_size, self.n))
        #: ``f(x; w0)`` ``(N, C)``: the linearization's outputs, from the same forward passes
        self.outputs = torch.cat(outputs)

    # ------------------------------------------------------------------------------ capture

    def _batch(self, x: torch.Tensor, outputs: list[torch.Tensor]) -> list[tuple]:
        """The factors of one batch, site by site (its outputs ``f(x; w0)`` appended to ``outputs``)."""
        lin = self.lin
        inputs: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(self.sites))}
        shapes: dict[int, list[tuple[int, ...]]] = {k: [] for k in range(len(self.sites))}
        handles = []
        live = [k for k, s in enumerate(self.sites) if not s.fallback]

        def capture(k: int):
            def hook(module, args, out=None):
                inputs[k].append(args[0].detach())

            return hook

        def shape_of(k: int):
            def hook(module, args, out):
                shapes[k].append(tuple(out.shape[1:]))

            return hook

        def shape_pre(k: int):
            def hook(module, args):
                shapes[k].append(tuple(args[0].shape[1:]))

            return hook

        for k in live:
            site = self.sites[k]
            handles.append(site.module.register_forward_pre_hook(capture(k)))
            if site.kind == AFFINE and norm_act(site.module):
                handles.append(site.module.drop.register_forward_pre_hook(shape_pre(k)))
            else:
                handles.append(site.module.register_forward_hook(shape_of(k)))
        try:
            with torch.no_grad():
                out = lin.module(x)
        finally:
            for h in handles:
                h.remove()
        outputs.append(out.detach())
        c = out.shape[1]
        self.classes = c
        order = [(k, j) for k in live for j in range(len(shapes[k]))]
        eps0 = tuple(x.new_zeros((x.shape[0], *shapes[k][j])) for k, j in order)
        slot = {kj: i for i, kj in enumerate(order)}
        state: dict[str, object] = {}

        def inject(k: int):
            def hook(module, args, out):
                j = state["calls"][k]
                state["calls"][k] += 1
                return out + state["eps"][slot[(k, j)]]

            return hook

        def inject_pre(k: int):
            def hook(module, args):
                j = state["calls"][k]
                state["calls"][k] += 1
                return (args[0] + state["eps"][slot[(k, j)]],) + tuple(args[1:])

            return hook

        def run(*eps: torch.Tensor) -> torch.Tensor:
            state["eps"] = eps
            state["calls"] = {k: 0 for k in live}
            return lin.module(x)

        cots: tuple[torch.Tensor, ...] = ()
        if order:
            handles = []
            for k in live:
                site = self.sites[k]
                if site.kind == AFFINE and norm_act(site.module):
                    handles.append(site.module.drop.register_forward_pre_hook(inject_pre(k)))
                else:
                    handles.append(site.module.register_forward_hook(inject(k)))
            try:
                _, pullback = vjp(run, *eps0)
                basis = torch.eye(c, dtype=x.dtype, device=x.device)
                basis = basis.unsqueeze(1).expand(c, x.shape[0], c)
                cots = vmap(pullback)(basis)  # per slot: (C, B, *out)
            finally:
                for h in handles:
                    h.remove()
        blocks = []
        for k, site in enumerate(self.sites):
            if site.fallback:
                from lqf.linearization.jacobian import jacobian

                jac = jacobian(lin, x, site.tensors).detach()  # (B, C, P_site)
                blocks.append((DENSE, jac))
                continue
            calls = len(shapes[k])
            if calls == 0:  # the module never ran as a module: take its rows by jacrev
                site.fallback = True
                from lqf.linearization.jacobian import jacobian

                blocks.append((DENSE, jacobian(lin, x, site.tensors).detach()))
                continue
            gs = [positions(site, cots[slot[(k, j)]].detach()) for j in range(calls)]
            g = gs[0] if calls == 1 else torch.cat(gs, dim=2)
            if site.kind == AFFINE:
                xhs = [xhat(site.module, a) for a in inputs[k]]
                xh = xhs[0] if calls == 1 else torch.cat(xhs, dim=1)  # (B, S, O)
                rows = [(g * xh.unsqueeze(1)).sum(2) if i == site.weight else g.sum(2) for i in site.tensors]
                blocks.append((DENSE, torch.cat(rows, dim=2)))
                continue
            ps = [patches(site.module, v) for v in inputs[k]]
            a = ps[0] if calls == 1 else torch.cat(ps, dim=1)  # (B, S, G, K)
            use_dense = self.force_dense
            if not use_dense:
                struct, dense = kernel_cost(site, a.shape[1], c)
                use_dense = dense <= struct
            if use_dense or site.weight is None:
                rows = [
                    torch.einsum("bcsgo,bsgk->bcgok", g, a) if i == site.weight else g.sum(2)
                    for i in site.tensors
                ]
                blocks.append((DENSE, torch.cat([r.reshape(r.shape[0], c, -1) for r in rows], dim=2)))
            else:
                blocks.append((STRUCT, a, g))
        return blocks

    # ------------------------------------------------------------------------------ use

    def site_metric(self, metric: Sequence[float] | None) -> list[tuple[float, float]]:
        """Per site ``(1/m_weight, 1/m_bias)`` (struct) for the per-tensor metric ``M``."""
        m = [1.0] * len(self.sizes) if metric is None else [float(v) for v in metric]
        return [
            (1 / m[s.weight] if s.weight is not None else 0.0, 1 / m[s.bias] if s.bias is not None else 0.0)
            for s in self.sites
        ]

    def dense_scale(self, k: int, metric: Sequence[float] | None) -> torch.Tensor:
        """``M^-1`` on the columns of site ``k``'s dense rows."""
        m = [1.0] * len(self.sizes) if metric is None else [float(v) for v in metric]
        idx = self.sites[k].tensors
        return torch.cat(
            [torch.full((self.sizes[i],), 1 / m[i], dtype=self.dtype, device=self.device) for i in idx]
        )

    @torch.no_grad()
    def jvp(self, v: Sequence[torch.Tensor]) -> torch.Tensor:
        """``J v`` of shape ``(N, C)`` for ``v`` shaped like ``lin.delta``."""
        return self._jvp(self.blocks, v, self.n)

    def _agrees(self, x: torch.Tensor, blocks: list[tuple]) -> bool:
        """Whether the factors of batch ``x`` give the same ``J v`` as forward-mode AD (random ``v``)."""
        if all(s.fallback for s in self.sites):
            return True
        gen = torch.Generator().manual_seed(0)
        v = [torch.randn(s, generator=gen, dtype=self.dtype).to(self.device) for s in self.shapes]
        want = self.lin.jvp(x, v)
        got = self._jvp(blocks, v, x.shape[0])
        tol = 1e-8 if self.dtype == torch.float64 else 1e-3
        return float((got - want).norm()) <= tol * float(want.norm()) + 1e-30

    def _jvp(self, blocks: list[tuple], v: Sequence[torch.Tensor], n: int) -> torch.Tensor:
        out = torch.zeros(n, self.classes, dtype=self.dtype, device=self.device)
        for site, block in zip(self.sites, blocks, strict=True):
            if block[0] == DENSE:
                vk = torch.cat([v[i].reshape(-1) for i in site.tensors])
                out += block[1] @ vk
                continue
            _, a, g = block
            flat = g.reshape(n, g.shape[1], -1)  # (N, C, S * G * O)
            w = v[site.weight].reshape(site.groups, g.shape[-1], a.shape[-1])
            u = torch.einsum("bsgk,gok->bsgo", a, w)
            if site.bias is not None:
                u = u + v[site.bias].reshape(site.groups, -1)
            out += torch.bmm(flat, u.reshape(n, -1, 1)).squeeze(2)
        return out

    @torch.no_grad()
    def vjp(self, u: torch.Tensor) -> list[torch.Tensor]:
        """``J^T u`` (shaped like ``lin.delta``) for ``u`` of shape ``(N, C)``."""
        return self._vjp(self.blocks, u)

    def _vjp(self, blocks: list[tuple], u: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.sizes)
        u = u.to(self.dtype)
        for site, block in zip(self.sites, blocks, strict=True):
            if block[0] == DENSE:
                d = block[1]
                flat = d.reshape(-1, d.shape[2]).T @ u.reshape(-1)  # a matrix-vector product, no temporary
                idx = site.tensors
                for i, piece in zip(idx, torch.split(flat, [self.sizes[i] for i in idx]), strict=True):
                    out[i] = piece.reshape(self.shapes[i])
                continue
            _, a, g = block
            m = g.shape[0]
            h = torch.bmm(u.unsqueeze(1), g.reshape(m, g.shape[1], -1)).reshape(m, *g.shape[2:])
            out[site.weight] = torch.einsum("bsgo,bsgk->gok", h, a).reshape(self.shapes[site.weight])
            if site.bias is not None:
                out[site.bias] = h.sum((0, 1)).reshape(self.shapes[site.bias])
        zeros = [torch.zeros(s, dtype=self.dtype, device=self.device) for s in self.shapes]
        return [t if t is not None else z for t, z in zip(out, zeros, strict=True)]

    def normal(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``J^T J v`` (shaped like ``lin.delta``)."""
        return self.vjp(self.jvp(v))

    def dense(self) -> torch.Tensor:
        """The dense ``J`` ``(N*C, P)`` (rows sample-major, columns in ``delta`` order), from the factors."""
        cols: list[torch.Tensor | None] = [None] * len(self.sizes)
        for site, block in zip(self.sites, self.blocks, strict=True):
            if block[0] == DENSE:
                idx = site.tensors
                pieces = torch.split(block[1], [self.sizes[i] for i in idx], dim=2)
                for i, piece in zip(idx, pieces, strict=True):
                    cols[i] = piece
                continue
            _, a, g = block
            jw = torch.einsum("bcsgo,bsgk->bcgok", g, a)
            cols[site.weight] = jw.reshape(self.n, self.classes, -1)
            if site.bias is not None:
                cols[site.bias] = g.sum(2).reshape(self.n, self.classes, -1)
        return torch.cat(cols, dim=2).reshape(self.n * self.classes, -1)

    @torch.no_grad()
    def diagonal(self, metric: Sequence[float] | None = None) -> torch.Tensor:
        """The diagonal of ``J M^-1 J^T`` ``(N, C)``: each row's squared norm in ``M^-1`` (float64)."""
        out = torch.zeros(self.n, self.classes, dtype=torch.float64, device=self.device)
        inv = self.site_metric(metric)
        for k, block in enumerate(self.blocks):
            if block[0] == DENSE:
                scale = self.dense_scale(k, metric)
                for lo in range(0, self.n, 256):  # row chunks: no temporary the size of the rows
                    rows = block[1][lo : lo + 256]
                    out[lo : lo + 256] += (rows * rows * scale).sum(2).double()
                continue
            _, a, g = block
            inv_w, inv_b = inv[k]
            gg = torch.einsum("bcsgo,bctgo->bcstg", g, g)
            aa = torch.einsum("bsgk,btgk->bstg", a, a) * inv_w + inv_b
            out += (gg * aa.unsqueeze(1)).sum((2, 3, 4)).double()
        return out

    def nbytes(self) -> int:
        """Memory held by the factors."""
        return sum(t.numel() * t.element_size() for block in self.blocks for t in block[1:])
