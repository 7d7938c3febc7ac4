"""The empirical tangent kernel ``K = J1 M^-1 J2^T`` from factored Jacobians, never forming ``J``.

Rows are ``(x, c)`` pairs, sample-major (``x * C + c``), as everywhere in the solvers. For a
layer kept as factors (:class:`~lqf.linearization.factors.JacobianFactors`) with inputs ``a``
and output cotangents ``g`` at positions ``s``, its contribution is

    K[(x, c), (x', c')] = sum_{s, s'} <g_{x,c,s}, g_{x',c',s'}> (<a_{x,s}, a_{x',s'}> / m_W + 1 / m_b),

per group of a grouped convolution, where ``m_W`` and ``m_b`` are the metric's scalars of the
weight and the bias (``M = I``: both 1; a bias that is not linearized adds nothing). It costs
``S^2 (O + 1)`` per pair of rows, against ``O I`` for the rows of the dense ``J``. Layers kept
as dense rows ``D`` add ``D1 M^-1 D2^T``. The result is accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lqf.linearization.factors import DENSE, JacobianFactors

#: temporary elements per block of the cotangent Gram (about 64 MB in float32)
BLOCK_ELEMENTS = 2**24


def _struct_block(
    a1: torch.Tensor, g1: torch.Tensor, a2: torch.Tensor, g2: torch.Tensor, inv_w: float, inv_b: float
) -> torch.Tensor:
    """``(b1, C, b2, C)`` contribution of one factored layer between two blocks of inputs.

    ``a``: ``(b, S, G, K)`` inputs; ``g``: ``(b, C, S, G, O)`` cotangents.
    """
    b1, c, s1, groups, o = g1.shape
    b2, _, s2, _, _ = g2.shape
    gg = torch.bmm(
        g1.permute(3, 0, 1, 2, 4).reshape(groups, b1 * c * s1, o),
        g2.permute(3, 4, 0, 1, 2).reshape(groups, o, b2 * c * s2),
    ).view(groups, b1, c, s1, b2, c, s2)
    weight = torch.bmm(
        a1.permute(2, 0, 1, 3).reshape(groups, b1 * s1, -1),
        a2.permute(2, 3, 0, 1).reshape(groups, -1, b2 * s2),
    )
    weight = weight * inv_w + inv_b
    gg *= weight.view(groups, b1, 1, s1, b2, 1, s2)
    return gg.sum(dim=(0, 3, 6))


def tangent_kernel(
    f1: JacobianFactors,
    f2: JacobianFactors | None = None,
    metric: Sequence[float] | None = None,
    *,
    on_block: Callable[[float], None] | None = None,
    part: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """``J1 M^-1 J2^T`` of shape ``(N1 C, N2 C)`` (float64); ``f2=None``: the symmetric ``J1 M^-1 J1^T``.

    Args:
        f1, f2: factors of the same linearized model on two sets of inputs.
        metric: ``M`` as one positive scalar per linearized tensor (default all 1).
        on_block: called with the fraction done after each block (progress).
        part: ``(p, W)``: only the row chunks and blocks ``p, p + W, ...`` of the ``W`` parts (the
            rest stays 0), so that ``W`` processes summing their parts get the whole kernel.
    """
    p, parts = part
    sym = f2 is None or f2 is f1
    f2 = f1 if f2 is None else f2
    c = f1.classes
    n1, n2 = f1.n, f2.n
    out = torch.zeros(n1 * c, n2 * c, dtype=torch.float64, device=f1.device)
    kinds = [b[0] for b in f1.blocks]
    if kinds != [b[0] for b in f2.blocks]:
        raise ValueError("the two sets of factors keep different layers dense; build them alike")
    dense = [k for k, kind in enumerate(kinds) if kind == DENSE]
    for k in dense:  # dense rows: D1 M^-1 D2^T, in row chunks (no copy of the rows)
        d1 = f1.blocks[k][1].reshape(n1 * c, -1)
        d2 = f2.blocks[k][1].reshape(n2 * c, -1)
        scale = None if metric is None else f1.dense_scale(k, metric)
        chunk = max(1, BLOCK_ELEMENTS // max(1, n2 * c))
        for index, lo in enumerate(range(0, n1 * c, chunk)):
            if index % parts != p:
                continue
            rows = d1[lo : lo + chunk] if scale is None else d1[lo : lo + chunk] * scale
            if sym:  # only the columns from this chunk on; the rest is its mirror
                part = rows @ d2[lo:].T
                width = min(chunk, part.shape[0])
                square = part[:, :width]
                part[:, :width] = (square + square.T) / 2  # exactly symmetric, as K is
                out[lo : lo + chunk, lo:] += part
                out[lo + chunk :, lo : lo + chunk] += part[:, chunk:].T
            else:
                out[lo : lo + chunk] += rows @ d2.T
    inv = f1.site_metric(metric)
    structs = [k for k, b in enumerate(f1.blocks) if b[0] != DENSE]
    if not structs:
        if on_block is not None:
            on_block(1.0)
        return out
    widest = max(f1.blocks[k][2].shape[2] * f1.blocks[k][2].shape[3] for k in structs)
    step = max(1, int((BLOCK_ELEMENTS / (c * c * widest * widest)) ** 0.5))
    pairs = [(i, j) for i in range(0, n1, step) for j in range(0, n2, step) if not sym or j >= i]
    pairs = pairs[p::parts]
    for done, (i, j) in enumerate(pairs, start=1):
        block = torch.zeros(min(step, n1 - i), c, min(step, n2 - j), c, dtype=f1.dtype, device=f1.device)
        for k in structs:
            _, a1, g1 = f1.blocks[k]
            _, a2, g2 = f2.blocks[k]
            block += _struct_block(
                a1[i : i + step], g1[i : i + step], a2[j : j + step], g2[j : j + step], *inv[k]
            )
        rows = slice(i * c, (i + block.shape[0]) * c)
        cols = slice(j * c, (j + block.shape[2]) * c)
        flat = block.reshape(block.shape[0] * c, block.shape[2] * c).double()
        if sym and j == i:
            flat = (flat + flat.T) / 2  # rounding leaves a diagonal block a little asymmetric
        out[rows, cols] += flat
        if sym and j > i:
            out[cols, rows] += flat.T
        if on_block is not None:
            on_block(done / len(pairs))
    return out
