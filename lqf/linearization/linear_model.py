"""The first-order Taylor expansion of a network in (a subset of) its weights.

For a network ``f(x; w)`` and pretrained weights ``w0``,

    f_lin(x; w0 + dw) = f(x; w0) + J_w f(x; w0) dw,

linear in ``dw``. :class:`LinearizedModel` evaluates it for any
``nn.Module`` with ``torch.func``: ``functional_call`` runs the module with
the linearized weights passed in, and ``jvp`` returns the primal ``f(x; w0)``
and the tangent ``J dw`` in one forward pass (forward-mode AD). ``J^T u``
comes from ``vjp``. Only the parameters named in ``names`` are linearized;
every other parameter and every buffer (BatchNorm running statistics) stays
a constant at its pretrained value, and the module runs in eval mode.

Attention kernels without forward-mode AD (PyTorch's fused
``scaled_dot_product_attention`` on the CPU) are run through PyTorch's
reference ("math") implementation, which has it, and ``nn.MultiheadAttention``
without its fused inference path.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

Tensors = tuple[torch.Tensor, ...]


@contextlib.contextmanager
def _reference_attention():
    """Attention through ops that have forward-mode AD: the math SDPA backend, no fused MHA."""
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # older torch: nothing to switch
            pass
        mha = getattr(torch.backends, "mha", None)
        if mha is not None:
            was = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, was)
        yield


@contextlib.contextmanager
def _quiet_forward_ad():
    """torch loads its forward-mode decompositions on the first jvp through ``torch.jit.script``,
    which warns that it is deprecated: a message about torch's internals, not for the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        yield


class LinearizedModel(nn.Module):
    """``f_lin(x) = f(x; w0) + J_w f(x; w0) delta`` over the parameters ``names``.

    Args:
        module: the network ``f`` (any ``nn.Module``); its current weights are
            ``w0``. It is put in eval mode and its parameters are frozen.
        names: names (as in ``module.named_parameters()``) of the linearized
            parameters ``w``; the others stay at ``w0``.

    The trainable parameters are ``delta`` (one tensor per name, zeros at
    construction, so that ``f_lin == f`` initially).
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        params = dict(module.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"not parameters of the module: {missing[:5]}")
        if not names:
            raise ValueError("nothing to linearize: names is empty")
        self.module = module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.names = list(names)
        self.delta = nn.ParameterList([nn.Parameter(torch.zeros_like(params[n])) for n in self.names])

    def train(self, mode: bool = True) -> LinearizedModel:
        """Only ``self.training`` changes: the network itself always runs in eval mode."""
        self.training = mode
        self.module.eval()
        return self

    @property
    def w0(self) -> Tensors:
        """The linearization point, one tensor per name (the module's own weights)."""
        params = dict(self.module.named_parameters())
        return tuple(params[n] for n in self.names)

    def num_linearized(self) -> int:
        """Number of scalar weights in ``w``."""
        return sum(d.numel() for d in self.delta)

    def _f(self, x: torch.Tensor):
        def f(*w: torch.Tensor) -> torch.Tensor:
            return functional_call(self.module, dict(zip(self.names, w, strict=True)), (x,))

        return f

    def primal_tangent(self, x: torch.Tensor, v: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x; w0), J v)`` in one forward pass; ``v`` shaped like ``delta``.

        Differentiable in ``v`` (reverse mode through the tangent), which is how
        the mini-batch solvers train ``delta``.
        """
        with _quiet_forward_ad():
            try:
                return jvp(self._f(x), self.w0, tuple(v))
            except NotImplementedError:
                with _reference_attention():
                    return jvp(self._f(x), self.w0, tuple(v))

    def jvp(self, x: torch.Tensor, v: Sequence[torch.Tensor]) -> torch.Tensor:
        """``J v`` of shape ``(B, C)``."""
        return self.primal_tangent(x, v)[1]

    def vjp(self, x: torch.Tensor, u: torch.Tensor) -> Tensors:
        """``J^T u`` (shaped like ``delta``) for ``u`` of shape ``(B, C)``."""
        _, pullback = vjp(self._f(x), *self.w0)
        return pullback(u)

    def primal(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x; w0)``."""
        return self.module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``f_lin(x)`` of shape ``(B, C)``."""
        f0, jv = self.primal_tangent(x, tuple(self.delta))
        return f0 + jv

    @torch.no_grad()
    def nonlinear_weights(self) -> dict[str, torch.Tensor]:
        """``w0 + delta`` by name: the weights for predicting with the network itself."""
        return {n: w + d for n, w, d in zip(self.names, self.w0, self.delta, strict=True)}

    def forward_nonlinear(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x; w0 + delta)``: the cheap alternative to ``f_lin`` (one plain forward)."""
        return functional_call(self.module, self.nonlinear_weights(), (x,))
