"""Swap ReLU-family activations for Leaky-ReLU.

LQF linearizes networks with Leaky-ReLU: with ReLU, the tangent features of a
unit vanish wherever its pre-activation is negative, so the linear model
loses those directions. Pretrained networks here use ReLU or ReLU6; the swap
changes their function (the negative side is no longer zero), which is why
:mod:`lqf.linearization.repair` can distil the original network back into the
swapped one.

``LeakyReLU6(x) = min(max(x, slope * x), 6)`` keeps ReLU6's upper clip.
"""

from __future__ import annotations

import torch
from torch import nn


class LeakyReLU6(nn.Module):
    """``min(max(x, slope * x), 6)``: ReLU6 with a leaky negative side (0 <= slope < 1)."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(nn.functional.leaky_relu(x, self.negative_slope), max=6.0)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


def swap_activations(module: nn.Module, slope: float, keep_clip: bool = True) -> int:
    """Replace every ``nn.ReLU``/``nn.ReLU6`` (and ``nn.LeakyReLU``) in ``module`` in place.

    ``nn.ReLU`` becomes ``nn.LeakyReLU(slope)``; ``nn.ReLU6`` becomes
    :class:`LeakyReLU6` (``keep_clip=True``) or ``nn.LeakyReLU(slope)``.
    Activations written as function calls inside a ``forward`` are not seen;
    the return value, the number of modules replaced, lets callers check.
    ``slope == 0`` with ``keep_clip`` leaves the function unchanged.
    """
    if not 0 <= slope < 1:
        raise ValueError(f"negative slope must be in [0, 1), got {slope}")
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if isinstance(child, nn.ReLU6) or (isinstance(child, nn.Hardtanh) and _is_relu6(child)):
                new = LeakyReLU6(slope) if keep_clip else nn.LeakyReLU(slope)
            elif isinstance(child, (nn.ReLU, nn.LeakyReLU)):
                new = nn.LeakyReLU(slope)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


def _is_relu6(m: nn.Hardtanh) -> bool:
    return m.min_val == 0.0 and m.max_val == 6.0
