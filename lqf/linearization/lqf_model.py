"""The trained LQF classifier: frozen prefix, then the linearized rest.

``LQFModel(x) = f_lin(prefix(x))``: the layers below the first linearized
one run as usual (their output is all the linear model needs), the rest is
the Taylor expansion around ``w0`` with the learned ``delta``. With
``predict="nonlinear"`` it instead runs the network itself at ``w0 + delta``
(one ordinary forward pass instead of a jvp: cheaper, but no longer the
model that was trained).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lqf.linearization.linear_model import LinearizedModel
from lqf.models.transfer import TransferModel

PREDICT_MODES = ("linear", "nonlinear")


class LQFModel(nn.Module):
    """A classifier ``(B, 3, S, S) -> (B, C)`` built from a :class:`TransferModel`.

    Args:
        base: the network (activations already swapped, head already fitted).
        names: linearized parameter names (in ``base.named_parameters()``).
        prefix: frozen modules run before the linearized part (``None``: the
            whole ``base`` is linearized through its own forward).
        suffix: the modules the linear model expands (``None``: ``base``).
        predict: ``linear`` (``f_lin``) or ``nonlinear`` (``f(w0 + delta)``).
        spec: what :func:`lqf.methods.lqf.rebuild` needs to rebuild it (saved in ``model.json``).
    """

    def __init__(
        self,
        base: TransferModel,
        names: list[str],
        prefix: nn.Module | None,
        suffix: nn.Module | None,
        predict: str = "linear",
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if predict not in PREDICT_MODES:
            raise ValueError(f"predict must be one of {PREDICT_MODES}, got {predict!r}")
        self.prefix = prefix if prefix is not None else nn.Identity()
        target = suffix if suffix is not None else base
        own = {id(p): n for n, p in target.named_parameters()}
        base_names = {id(p): n for n, p in base.named_parameters()}
        local = [own[id(p)] for n, p in base.named_parameters() if n in set(names)]
        self.linear = LinearizedModel(target, local)
        self.base_names = [base_names[id(p)] for p in self.linear.w0]
        self.predict = predict
        self.spec = dict(spec or {})
        self.num_classes = base.num_classes
        self.num_features = base.num_features
        self.input_spec = base.input_spec
        self.__dict__["head"] = base.head  # for inspection; its weights live in ``linear``
        self.name = base.name

    def train(self, mode: bool = True) -> LQFModel:
        self.training = mode
        self.prefix.eval()
        self.linear.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` for images ``x`` in ``[0, 1]``."""
        with torch.no_grad():
            z = self.prefix(x)
        if self.predict == "nonlinear":
            return self.linear.forward_nonlinear(z)
        return self.linear(z)

    def features_in(self, x: torch.Tensor) -> torch.Tensor:
        """The linear model's inputs (the prefix output) for images ``x``."""
        with torch.no_grad():
            return self.prefix(x)
