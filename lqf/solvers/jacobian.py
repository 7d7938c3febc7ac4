"""Dense Jacobians of a linearized model, in chunks (for the kernel solver and tests)."""

from __future__ import annotations

import torch

from lqf.linearization import LinearizedModel
from lqf.linearization.jacobian import jacobian


def parameter_groups(model: LinearizedModel, columns_per_group: int) -> list[list[int]]:
    """Consecutive parameter indices grouped so that each group has about ``columns_per_group`` weights.

    A single tensor larger than that forms a group of its own.
    """
    groups: list[list[int]] = []
    size = 0
    for i, d in enumerate(model.delta):
        if groups and size + d.numel() <= columns_per_group:
            groups[-1].append(i)
            size += d.numel()
        else:
            groups.append([i])
            size = d.numel()
    return groups


def fill_jacobian(
    model: LinearizedModel,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    chunk_mb: float = 256.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """Write the dense ``J`` (``(N*C, P)``, rows sample-major) into ``out`` in place.

    Columns are computed in parameter groups of about ``chunk_mb`` per
    ``batch_size`` samples and copied straight into ``out``, so the memory
    beyond ``out`` itself stays about ``chunk_mb`` plus the autograd
    temporaries of one group.
    """
    n = x.shape[0]
    c = out.shape[0] // n
    columns = max(1, int(chunk_mb * 2**20 / 4 / max(1, batch_size * c)))
    offsets = [0]
    for d in model.delta:
        offsets.append(offsets[-1] + d.numel())
    for group in parameter_groups(model, columns):
        lo, hi = offsets[group[0]], offsets[group[-1] + 1]
        for i in range(0, n, batch_size):
            block = jacobian(model, x[i : i + batch_size].to(out.device), group).detach()
            b = block.shape[0]
            out[i * c : (i + b) * c, lo:hi] = block.reshape(b * c, hi - lo)
    return out
