"""Truncated Sylvester-Hadamard matrices and the fast Walsh-Hadamard transform.

The Sylvester construction ``H_1 = [1]``, ``H_{2m} = [[H_m, H_m], [H_m, -H_m]]``
has the closed form ``H_n[i, j] = (-1)^popcount(i & j)`` (bitwise AND). The
fixed classifier of Hoffer, Hubara and Soudry (ICLR 2018) uses the top-left
``C x d`` block of ``H_n`` with ``n`` the next power of two ``>= max(d, C)``.

Because ``H_n[i, j]`` depends only on ``i & j``, that block is periodic: with
``k = min(p2(C), p2(d))`` (``p2`` = next power of two),

    H_n[i, j] = H_k[i mod k, j mod k]        for i < C, j < d.

(If ``k = p2(C)`` then ``i < k`` and ``i & j = i & (j mod k)``; if ``k = p2(d)``
then ``j < k`` and ``i & j = (i mod k) & j``.) Hence, for ``x`` of length ``d``,

    (H_n[:C, :d] x)_i = (H_k u)_{i mod k},    u_r = sum_{j < d, j = r mod k} x_j,

which :func:`hadamard_project` computes with ``d`` additions (the fold ``u``), the
fast transform of length ``k`` (``k log2 k`` additions) and a copy of ``C``
outputs: ``O(d + C + k log k)`` instead of the ``O(dC)`` of a dense product.
:func:`truncated_hadamard` is the dense twin it is tested against.

The same holds for the rows ``o .. o+C-1`` (``H_n[o:o+C, :d]``, ``R = o + C``
rows in the periodicity above); the fixed heads use ``o = 1`` (see
:mod:`lqf.heads.fixed`).

Orthogonality of ``H_n[:C, :d]`` (entries ``+-1``): rows ``i, i'`` have inner
product ``sum_{j<d} (-1)^popcount((i xor i') & j)``, which vanishes for all
``i != i' < C`` when ``p2(C)`` divides ``d`` (each aligned block of ``p2(C)``
columns sums a non-trivial character to zero). Columns are orthogonal when
``p2(d)`` divides ``C``. Otherwise neither holds exactly; for ``C > p2(d)`` rows
repeat with period ``p2(d)`` (classes ``i`` and ``i + p2(d)`` get the same row).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"next_pow2 needs n >= 1, got {n}")
    return 1 << (n - 1).bit_length()


def period(rows: int, in_features: int) -> int:
    """``k = min(p2(R), p2(d))``: ``H_n[:R, :d]`` is ``H_k`` tiled (see the module docstring)."""
    return min(next_pow2(rows), next_pow2(in_features))


def sylvester(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Sylvester-Hadamard matrix ``H_n`` ``(n, n)``, entries ``+-1`` (``n`` a power of two).

    Examples:
        >>> sylvester(4)
        tensor([[ 1.,  1.,  1.,  1.],
                [ 1., -1.,  1., -1.],
                [ 1.,  1., -1., -1.],
                [ 1., -1., -1.,  1.]])
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"sylvester needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def truncated_hadamard(
    out_features: int, in_features: int, dtype: torch.dtype = torch.float32, *, offset: int = 0
) -> torch.Tensor:
    """The dense block ``H_n[o:o+C, :d]`` ``(C, d)``, ``n = p2(max(d, o + C))``, entries ``+-1``.

    ``o = offset`` skips the first rows (``o = 1`` drops the constant row).
    Built by tiling ``H_k`` (``k = min(p2(o + C), p2(d))``), so ``H_n`` itself is
    never formed (``n^2`` entries would not fit in memory for ``C = 10^5``).
    """
    rows = offset + out_features
    k = period(rows, in_features)
    h = sylvester(k, dtype)
    reps_rows = -(-rows // k)
    reps_cols = -(-in_features // k)
    return h.repeat(reps_rows, reps_cols)[offset:rows, :in_features].contiguous()


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Fast Walsh-Hadamard transform ``x @ H_k`` along the last dimension (unnormalised).

    ``x``: ``(..., k)`` with ``k`` a power of two; returns ``(..., k)``, in
    Sylvester (natural) order, using ``k log2 k`` additions and subtractions
    per row. ``H_k`` is symmetric, so this is also ``H_k x``. Stage ``s`` maps
    each pair ``(a, b)`` at distance ``h = 2^s`` to ``(a + b, a - b)``. Without
    autograd the stages write into two preallocated buffers (two kernels per
    stage); with it they build new tensors, which autograd can differentiate.

    Examples:
        >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor([1., 1., 1., 1.])
    """
    k = x.shape[-1]
    if k < 1 or k & (k - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {k}")
    lead = x.shape[:-1]
    y = x.reshape(-1, k)
    if k == 1:
        return y.clone().reshape(*lead, k)
    if torch.is_grad_enabled() and x.requires_grad:
        h = 1
        while h < k:
            pairs = y.view(-1, k // (2 * h), 2, h)
            a, b = pairs[:, :, 0], pairs[:, :, 1]
            y = torch.stack((a + b, a - b), dim=2)
            h *= 2
        return y.reshape(*lead, k)
    buffers = (torch.empty_like(y), torch.empty_like(y))  # the caller's x is never written
    src, h, stage = y, 1, 0
    while h < k:
        dst = buffers[stage % 2]
        p, q = src.view(-1, k // (2 * h), 2, h), dst.view(-1, k // (2 * h), 2, h)
        torch.add(p[:, :, 0], p[:, :, 1], out=q[:, :, 0])
        torch.sub(p[:, :, 0], p[:, :, 1], out=q[:, :, 1])
        src, h, stage = dst, 2 * h, stage + 1
    return src.reshape(*lead, k)


def fold(x: torch.Tensor, k: int) -> torch.Tensor:
    """``u_r = sum_{j = r mod k} x_j``: ``(..., d)`` to ``(..., k)`` (zero-padded if ``d < k``)."""
    d = x.shape[-1]
    pad = (-d) % k
    if pad:
        x = F.pad(x, (0, pad))
    if x.shape[-1] == k:
        return x
    return x.reshape(*x.shape[:-1], -1, k).sum(-2)


def hadamard_project(x: torch.Tensor, out_features: int, *, offset: int = 0) -> torch.Tensor:
    """``x @ H_n[o:o+C, :d]^T`` without forming the matrix: ``(..., d)`` to ``(..., C)``.

    Fold to the period ``k``, transform with :func:`fwht`, tile to ``C``
    (module docstring). Additions only, so it equals the dense product up to
    the order of floating-point summation.

    Examples:
        >>> x = torch.randn(3, 20)
        >>> torch.allclose(hadamard_project(x, 7), x @ truncated_hadamard(7, 20).T, atol=1e-5)
        True
    """
    v = fwht(fold(x, period(offset + out_features, x.shape[-1])))
    return tile(v, out_features, offset=offset)


def tile(v: torch.Tensor, out_features: int, *, offset: int = 0) -> torch.Tensor:
    """Entries ``o .. o+C-1`` of ``v`` ``(..., k)`` repeated periodically: ``(..., C)``."""
    k = v.shape[-1]
    rows = offset + out_features
    if rows <= k:
        return v[..., offset:rows]
    reps = -(-rows // k)
    expanded = v.unsqueeze(-2).expand(*v.shape[:-1], reps, k)
    return expanded.reshape(*v.shape[:-1], reps * k)[..., offset:rows]
