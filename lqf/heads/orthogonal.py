"""Random orthogonal classifier matrices, drawn from the head's own generator.

For ``C <= d`` the ``C x d`` matrix has orthonormal rows (``W W^T = I``); for
``C > d`` at most ``d`` directions can be orthogonal, so the columns are
orthogonal instead, scaled to ``W^T W = (C / d) I`` (rows then have unit norm on
average, like the truncated Hadamard rows divided by ``sqrt(d)``). The factor
is Haar distributed: the QR decomposition of a Gaussian matrix with the signs
of ``diag(R)`` moved into ``Q`` (Mezzadri, 2007).
"""

from __future__ import annotations

import math

import torch


def random_orthogonal(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """A Haar-random ``(C, d)`` matrix in float64, seeded by ``seed`` only.

    Uses a private ``torch.Generator``: the global RNGs are untouched. The
    reduced QR of a ``(max, min)`` Gaussian costs ``O(max(C, d) min(C, d)^2)``.

    Examples:
        >>> w = random_orthogonal(3, 5, seed=0)
        >>> torch.allclose(w @ w.T, torch.eye(3, dtype=torch.float64))
        True
    """
    generator = torch.Generator().manual_seed(seed)
    tall, short = max(out_features, in_features), min(out_features, in_features)
    gauss = torch.randn(tall, short, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    signs = torch.sign(torch.diagonal(r))
    q = q * torch.where(signs == 0, torch.ones_like(signs), signs)
    if out_features <= in_features:
        return q.T.contiguous()
    return q * math.sqrt(out_features / in_features)
