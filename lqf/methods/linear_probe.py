"""Linear probe: a linear classifier on frozen, cached pretrained features.

The backbone runs once (eval mode) over the train and validation images; the
head is then fitted in closed form or by a convex solver:

* ``ridge``: least squares on one-hot targets ``Y`` (``N x C``) with penalty
  ``lambda * ||W||^2`` on centred features ``Phi`` (``N x D``)::

      W(lambda) = (Phi^T Phi + lambda I)^{-1} Phi^T Y = V diag(s / (s^2 + lambda)) U^T Y

  from one SVD ``Phi = U diag(s) V^T``, so the whole ``lambda`` path costs one
  decomposition; the bias is ``mean(Y) - mean(Phi) W``.
* ``logistic``: multinomial logistic regression on standardised features,
  ``mean CE + (lambda / 2) ||W||^2``, solved by full-batch L-BFGS.

``lambda`` is chosen on the validation split (never the test split) from the
log-spaced grid ``1e-6 ... 1e4`` unless given: for ridge it is relative to the
mean non-zero eigenvalue of ``Phi_c^T Phi_c``, for logistic regression it is
used as is. Without a validation split the default is ``1e-2``.
The fitted map is written into the model's ``nn.Linear`` head, so the result is
an ordinary model. With a fixed head (``--head fixed-*``) only its scale and
bias are fitted, the same two ways (:mod:`lqf.heads.probe`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lqf.config import option
from lqf.errors import LqfError
from lqf.heads.fixed import FixedClassifier
from lqf.heads.probe import fit_fixed_head
from lqf.methods.base import FitContext, Method, register_method
from lqf.solvers.ridge import GRID, NO_VALIDATION_DEFAULT, mean_eigenvalue, ridge_path
from lqf.training.evaluate import accuracy, apply


@dataclass
class LinearProbeOptions:
    """Options of ``--method linear-probe``."""

    probe: str = option(
        "ridge", "closed-form ridge regression or logistic regression", choices=("ridge", "logistic")
    )
    ridge: float | None = option(
        None,
        "regularisation lambda (ridge: relative to the mean eigenvalue of the centred feature "
        "Gram matrix; logistic: on standardised features); default: chosen on the validation split",
    )

    def __post_init__(self) -> None:
        if self.ridge is not None and self.ridge < 0:
            raise LqfError(f"--ridge must be >= 0, got {self.ridge}")


def logistic(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, lam: float, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``(W (D, C), b (C,))`` by L-BFGS.

    Minimises ``mean_i CE(W^T z_i + b, y_i) + (lam / 2) ||W||^2`` over
    standardised features ``z = (phi - m) / s``; the returned ``W, b`` act on
    raw features.
    """
    phi = features.double()
    m, s = phi.mean(0), phi.std(0).clamp_min(1e-8)
    z = (phi - m) / s
    w = torch.zeros(phi.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z @ w + b, labels) + 0.5 * lam * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / s.unsqueeze(1)).detach()
    return w_raw, (b - (m / s) @ w).detach()


@register_method
class LinearProbe(Method):
    """Closed-form ridge or logistic regression on frozen features."""

    name = "linear-probe"
    Options = LinearProbeOptions
    summary = "frozen features + ridge (closed form) or logistic regression"

    def fit(self, model: nn.Module, data, ctx: FitContext) -> None:
        o: LinearProbeOptions = self.options
        model.to(ctx.device).eval()
        fixed = isinstance(model.head, FixedClassifier)
        if not fixed and not isinstance(model.head, nn.Linear):
            raise LqfError("linear-probe needs an nn.Linear head or a fixed head (--head fixed-*)")
        bs = max(ctx.config.batch_size, 256)
        embed = lambda x: model.embed(x)  # noqa: E731
        train = apply(embed, data.train, batch_size=bs, device=ctx.device, desc="features", quiet=ctx.quiet)
        val = apply(embed, data.val, batch_size=bs, device=ctx.device, quiet=True) if len(data.val) else None
        c = model.head.out_features
        rel = [o.ridge] if o.ridge is not None else list(GRID)
        if val is None and o.ridge is None:
            rel = [NO_VALIDATION_DEFAULT]
        if fixed:  # only the scale and the bias are fitted (lqf.heads.probe)
            labels = data.val.labels if val is not None else None
            extra, record = fit_fixed_head(model.head, train, data.train.labels, val, labels, o.probe, rel)
            ctx.extra.update(extra)
            ctx.log(record)
            return
        if o.probe == "ridge":
            scale = mean_eigenvalue(train)
            targets = nn.functional.one_hot(data.train.labels, c).double()
            candidates = ridge_path(train, targets, [r * scale for r in rel])
        else:
            candidates = [logistic(train, data.train.labels, c, r) for r in rel]
        scores = []
        for w, b in candidates:
            scores.append(accuracy(val.double() @ w + b, data.val.labels) if val is not None else 0.0)
        # best validation accuracy; ties go to the stronger regularisation
        best = max(range(len(rel)), key=lambda i: (scores[i], i))
        w, b = candidates[best]
        with torch.no_grad():
            model.head.weight.copy_(w.T.float())
            model.head.bias.copy_(b.float())
        ctx.extra["ridge_relative"] = rel[best]
        ctx.extra["lambda_grid"] = rel
        ctx.extra["val_accuracy_grid"] = scores if val is not None else None
        record = {
            "epoch": 1,
            "val_accuracy": scores[best] if val is not None else None,
            "train_accuracy": accuracy(train.double() @ w + b, data.train.labels),
        }
        ctx.log(record)
