"""Dense per-sample Jacobians of a linearized model (the exact reference, and the rows of modules
that the factored form does not cover)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import functional_call, jacrev, vmap

from lqf.linearization.linear_model import LinearizedModel


def jacobian(model: LinearizedModel, x: torch.Tensor, index: Sequence[int] | None = None) -> torch.Tensor:
    """``J`` of shape ``(B, C, P)``: ``d f(x_b; w0)_c / d w_p`` for the linearized weights.

    ``index`` selects which of ``model.names`` are the columns (default all,
    in order, each flattened). Per-sample reverse mode (``vmap`` over samples
    of ``jacrev``), so the cost is ``B * C`` single-image backward passes.
    """
    names = model.names if index is None else [model.names[i] for i in index]
    w0 = dict(zip(model.names, model.w0, strict=True))
    w = tuple(w0[n] for n in names)

    def f(ws: tuple[torch.Tensor, ...], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model.module, dict(zip(names, ws, strict=True)), (xi.unsqueeze(0),))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(w, x)
    b = x.shape[0]
    return torch.cat([j.reshape(b, j.shape[1], -1) for j in jac], dim=2)
