"""Mini-batch solver: preconditioned SGD or Adam on the LQF loss (the paper's route).

Each step computes ``f_lin`` on a mini-batch of images (primal and tangent in
one jvp), the loss, its gradient in ``dw`` by reverse mode through the tangent,
adds the ridge term ``lam dw`` and applies the K-FAC inverse
``(kfac(J^T J / N) + lam I + damping I)^{-1}`` before the optimizer update.
It goes through the standard training loop, so it checkpoints every epoch,
resumes after Ctrl-C, and works with any per-batch transformation of the
images. Unlike ``cg`` and ``kernel`` it needs a learning rate and an epoch
count, and reaches the optimum only approximately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from lqf.training import train_epochs

if TYPE_CHECKING:
    from lqf.linearization.lqf_model import LQFModel
    from lqf.training.context import FitContext

Precondition = Callable[[torch.Tensor], torch.Tensor]


class PreconditionedOptimizer(torch.optim.Optimizer):
    """SGD with momentum, or Adam, on the preconditioned gradient ``P^{-1}(g + lam dw)``.

    Args:
        params: the tensors ``dw`` (one group).
        lr: step size.
        lam: ridge strength (the gradient of ``lam/2 ||dw||^2`` is added before preconditioning).
        precondition: flat ``g -> P^{-1} g`` (``None``: identity).
        kind: ``sgd`` (momentum 0.9) or ``adam`` (betas 0.9, 0.999).
    """

    def __init__(self, params, lr: float, lam: float, precondition: Precondition | None, kind: str = "sgd"):
        super().__init__(list(params), {"lr": lr})
        self.lam = lam
        self.precondition = precondition
        self.kind = kind

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        params = self.param_groups[0]["params"]
        lr = self.param_groups[0]["lr"]
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        w = torch.cat([p.reshape(-1) for p in params])
        g = g + self.lam * w
        if self.precondition is not None:
            g = self.precondition(g)
        state = self.state[params[0]]
        if self.kind == "sgd":
            buf = state.get("momentum")
            buf = g.clone() if buf is None else buf.mul_(0.9).add_(g)
            state["momentum"] = buf
            update = buf
        else:
            t = state.get("step", 0) + 1
            m = state.get("m", torch.zeros_like(g)).mul_(0.9).add_(g, alpha=0.1)
            v = state.get("v", torch.zeros_like(g)).mul_(0.999).addcmul_(g, g, value=0.001)
            state.update(step=t, m=m, v=v)
            update = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        offset = 0
        for p in params:
            p -= lr * update[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()


def fit_minibatch(model: LQFModel, data, ctx: FitContext, options, inputs: torch.Tensor) -> None:
    """Train ``model.linear.delta`` for ``ctx.config.epochs`` epochs (see the module docstring).

    ``inputs``: the cached inputs of the linear part for ``data.train``, used
    once to estimate the curvature (K-FAC factors and the ridge scale).
    """
    from lqf.solvers.problem import QuadraticProblem, hutchinson_trace

    lin = model.linear
    c = model.num_classes
    targets = options.target_scale * nn.functional.one_hot(data.train.labels, c).float()
    problem = QuadraticProblem(lin, inputs, targets, 0.0, batch_size=128)
    scale = hutchinson_trace(problem) / problem.residual.numel() / problem.n
    lam = (options.lqf_ridge if options.lqf_ridge is not None else 1e-2) * scale
    precondition = None
    ctx.extra["preconditioner"] = "none" if options.preconditioner == "none" else "kfac"
    if options.preconditioner != "none":
        from lqf.curvature import KFAC

        kfac = KFAC(lin, inputs, batch_size=64)
        if kfac.all_reduce_bytes:
            ctx.extra["kfac_all_reduce_bytes"] = kfac.all_reduce_bytes
        damping = options.damping * kfac.mean_eigenvalue()
        precondition = lambda g: kfac.inverse(g, damping, lam)  # noqa: E731
    ctx.extra["lam"] = lam
    optimizer = PreconditionedOptimizer(
        lin.delta.parameters(), options.lqf_lr, lam, precondition, options.lqf_optimizer
    )
    if options.lqf_loss == "mse":
        kappa = options.target_scale

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            t = kappa * nn.functional.one_hot(y, out.shape[1]).to(out.dtype)
            return 0.5 * (out - t).pow(2).sum(dim=1).mean()
    else:
        loss_fn = nn.functional.cross_entropy
    # the objective is convex: a batch loss 1e4 times the first one can only mean divergence
    train_epochs(
        model, data, ctx, optimizer=optimizer, loss_fn=loss_fn, desc="lqf", divergence=1e4, lr_flag="--lqf-lr"
    )
