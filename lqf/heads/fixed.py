"""Fixed classifier heads: a fixed matrix, one learned scale and a learned bias.

Hoffer, Hubara and Soudry, "Fix your classifier: the marginal value of training
the last weight layer" (ICLR 2018): the final affine layer can be fixed, up to
one learned global scale, with little or no loss of accuracy. Here

    logits = alpha * W z + b,    z = x / ||x||_2,

with ``x`` the features ``(B, d)``, ``W`` a fixed ``(C, d)`` matrix with
unit-norm rows (so ``W z`` are cosines), ``alpha`` the learned scale (inverse
temperature, an ``nn.Parameter`` of shape ``()``) and ``b`` the learned bias
``(C,)``. Only ``alpha`` and ``b`` are trainable: ``C + 1`` parameters.

``W`` is either a truncated Sylvester-Hadamard matrix (:mod:`lqf.heads.hadamard`),
which needs no storage and has a fast transform, or a random orthogonal matrix
(:mod:`lqf.heads.orthogonal`) drawn from the head's own seed.

The Hadamard head uses rows ``1 .. C`` of ``H_n``, ``W = H_n[1:C+1, :d] / sqrt(d)``
with ``n`` the next power of two ``>= max(d, C + 1)``: row 0 is constant, and
pooled features after a ReLU are non-negative, so their cosine with it is
large for every input (0.44 +- 0.04 for efficientnet_lite0 on fashion-mnist,
against 0.00 +- 0.02 for the next rows): class 0 would win every prediction
until training undid it. ``row_offset=0`` gives the plain ``H_n[:C, :d]``.

Storage: ``W = gain * M`` with ``M`` the buffer ``matrix`` (it follows
``.to(device/dtype)``): for the Hadamard head ``M`` holds the entries ``+-1``,
exact in every dtype, and ``gain = 1/sqrt(d)``; for the orthogonal head ``M = W``
(float32 unless moved), ``gain = 1``. ``M`` is
saved in state dicts unless the head is built with ``compact=True`` (or the
state dict is taken with :func:`compact_state_dict`); a state dict without it
loads and the matrix is regenerated from ``(kind, C, d, seed, row_offset)``. A state dict
with it is checked against the regenerated matrix, so a wrong seed or kind
fails loudly. The Hadamard head on its fast path holds no matrix at all.

Initial scale: ``alpha_0 = log(99 (C - 1))`` (at least ``log 99``). With
orthonormal rows, a feature pointing exactly along its class's row has cosine
1 with it and 0 with the others, and softmax probability
``e^alpha / (e^alpha + C - 1)``; ``alpha_0`` is the smallest scale at which that
probability reaches 0.99. A smaller scale caps the confidence training can
reach (the loss keeps pushing the features however well they are aligned), a
larger one saturates the softmax before the features have moved. Adaptive
optimisers change ``alpha`` by about the learning rate per step, so the start
value matters: ``alpha_0`` is 6.8 for 10 classes and 11.5 for 1,000.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lqf.heads.hadamard import fold, fwht, period, tile, truncated_hadamard
from lqf.heads.orthogonal import random_orthogonal

KINDS = ("hadamard", "orthogonal")
PATHS = ("auto", "dense", "fast")

#: the fast transform is used when the dense product would take at least this many
#: multiply-adds per example (``C * d``); below, one BLAS call beats the transform's
#: handful of small kernels. Measured (inference, batch 256, one thread): from
#: ``C * d = 40,960`` on, the fast path won at every larger size of the grid in
#: benchmarks/results/heads_speed.md; below, the winner varied (d = 1280, C = 10: fast
#: 119 us, dense 202 us; d = 256, C = 100: fast 199 us, dense 167 us).
FAST_MIN_MACS = 40_960


def default_scale(num_classes: int) -> float:
    """``log(99 (C - 1))``: a feature aligned with its row gets probability 0.99."""
    return math.log(99.0 * max(1, num_classes - 1))


def prefers_fast(in_features: int, out_features: int) -> bool:
    """Whether ``path="auto"`` uses the fast transform for a ``(C, d)`` Hadamard head."""
    return in_features * out_features >= FAST_MIN_MACS


class FixedClassifier(nn.Module):
    """Drop-in for ``nn.Linear(d, C)`` with a fixed matrix: ``alpha W x/||x|| + b``.

    Args:
        in_features: ``d``.
        out_features: ``C``.
        kind: ``"hadamard"`` (truncated Sylvester-Hadamard, divided by
            ``sqrt(d)``) or ``"orthogonal"`` (Haar random, from ``seed``).
        seed: seed of the orthogonal matrix (the global RNGs are never used).
        init_scale: ``alpha_0`` (default :func:`default_scale`).
        compact: keep ``matrix`` out of state dicts (it is regenerated on load).
        row_offset: Hadamard only: the first row of ``H_n`` used (default 1).
        path: Hadamard only: ``"fast"`` (Walsh-Hadamard transform, no stored
            matrix), ``"dense"`` (stored matrix, one matrix product) or
            ``"auto"`` (fast where :func:`prefers_fast`).

    Shapes: input ``(..., d)``, output ``(..., C)``.

    Examples:
        >>> head = FixedClassifier(1280, 10)
        >>> head(torch.randn(4, 1280)).shape
        torch.Size([4, 10])
        >>> [name for name, _ in head.named_parameters()]
        ['scale', 'bias']
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kind: str = "hadamard",
        *,
        seed: int = 0,
        init_scale: float | None = None,
        compact: bool = False,
        path: str = "auto",
        row_offset: int = 1,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown fixed matrix {kind!r}; valid: {', '.join(KINDS)}")
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"need d, C >= 1, got d={in_features}, C={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.kind = kind
        self.seed = int(seed)
        self.compact = compact
        self.row_offset = int(row_offset) if kind == "hadamard" else 0
        if self.row_offset < 0:
            raise ValueError(f"row_offset must be >= 0, got {row_offset}")
        self.fast = kind == "hadamard" and (
            path == "fast" or (path == "auto" and prefers_fast(in_features, out_features))
        )
        scale = default_scale(out_features) if init_scale is None else float(init_scale)
        self.scale = nn.Parameter(torch.tensor(scale))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.matrix: torch.Tensor | None
        if self.fast:
            self.matrix = None
        else:
            self.register_buffer("matrix", self.generate(), persistent=not compact)

    # -- the fixed matrix ---------------------------------------------------------
    def generate(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored matrix ``M`` ``(C, d)``, regenerated from ``(kind, C, d, seed, row_offset)``."""
        c, d = self.out_features, self.in_features
        if self.kind == "hadamard":
            return truncated_hadamard(c, d, dtype, offset=self.row_offset)
        return random_orthogonal(c, d, self.seed).to(dtype)

    @property
    def gain(self) -> float:
        """``W = gain * M``: ``1/sqrt(d)`` for the Hadamard head (unit-norm rows), else 1."""
        return 1.0 / math.sqrt(self.in_features) if self.kind == "hadamard" else 1.0

    def dense_matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The fixed matrix ``W`` ``(C, d)`` (generated; for tests and inspection)."""
        return self.generate(torch.float64).mul_(self.gain).to(dtype)

    # -- forward --------------------------------------------------------------------
    @staticmethod
    def normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        """``x / max(||x||_2, eps)`` along the last dimension."""
        return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed part ``W x/||x||`` ``(..., C)``: cosines of ``x`` with the rows of ``W``."""
        factor = self.gain / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        v = self._unscaled(x)
        if self.matrix is None:
            v = tile(v, self.out_features, offset=self.row_offset)
        return v * factor

    def _period(self) -> int:
        return period(self.row_offset + self.out_features, self.in_features)

    def _unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """``M x`` ``(..., C)`` (dense) or its period ``(..., k)`` (fast, before tiling)."""
        if self.matrix is not None:
            return x @ self.matrix.T
        return fwht(fold(x, self._period()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``alpha W x/||x|| + b`` ``(..., C)`` of features ``x`` ``(..., d)``.

        The normalisation and the scale are one factor per row,
        ``alpha gain / ||x||``, applied after the (linear) product.
        """
        factor = (self.scale * self.gain) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        v = self._unscaled(x)
        if self.matrix is not None:
            return torch.addcmul(self.bias, v, factor)
        k, first, end = v.shape[-1], self.row_offset, self.row_offset + self.out_features
        if end <= k:
            return torch.addcmul(self.bias, v[..., first:end], factor)
        # tile and add the bias in one pass: (..., 1, k) + (reps, k) -> (..., reps * k)
        reps = -(-end // k)
        bias = nn.functional.pad(self.bias, (first, reps * k - end)).view(reps, k)
        out = ((v * factor).unsqueeze(-2) + bias).reshape(*v.shape[:-1], reps * k)
        return out[..., first:end]

    # -- state dicts ----------------------------------------------------------------
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "matrix"
        stored = state_dict.get(key)
        if stored is not None:
            expected = self.generate(torch.float64)
            same = stored.shape == expected.shape and torch.allclose(
                stored.detach().double().cpu(), expected, rtol=0, atol=1e-6
            )
            if not same:
                error_msgs.append(
                    f"{key}: the stored fixed matrix differs from the {self.kind} matrix regenerated for "
                    f"C={self.out_features}, d={self.in_features}, seed={self.seed}, "
                    f"row_offset={self.row_offset}"
                )
            if self.matrix is None or self.compact:  # not a persistent buffer here
                state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key in missing_keys:  # saved compact: the matrix was regenerated at construction
            missing_keys.remove(key)

    def spec(self) -> dict[str, Any]:
        """What rebuilds this head (without its trained scale and bias)."""
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "seed": self.seed,
            "row_offset": self.row_offset,
        }

    def extra_repr(self) -> str:
        path = "fast" if self.fast else "dense"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}, "
            f"seed={self.seed}, row_offset={self.row_offset}, path={path}, compact={self.compact}"
        )


def compact_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without the fixed matrices of its :class:`FixedClassifier` heads.

    Loads back with ``module.load_state_dict(...)`` (strict): the matrices are
    regenerated from each head's ``(kind, C, d, seed)``.
    """
    drop = {
        f"{name}.matrix" if name else "matrix"
        for name, m in module.named_modules()
        if isinstance(m, FixedClassifier)
    }
    return {k: v for k, v in module.state_dict().items() if k not in drop}
