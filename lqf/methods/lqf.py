"""LQF: linear quadratic fine-tuning (Achille et al., CVPR 2021).

The network is replaced by its first-order Taylor expansion around the
pretrained weights ``w0`` in a chosen subset of its parameters,

    f_lin(x; w0 + dw) = f(x; w0) + J_w f(x; w0) dw,

and trained with the squared error on scaled one-hot targets plus a ridge
penalty, which makes training a convex quadratic problem with one minimiser
(:class:`~lqf.solvers.QuadraticProblem`). The paper's three changes are
options that can each be switched off for ablations:

* ``--leaky-slope``: ReLU/ReLU6 become Leaky-ReLU (0 keeps the original);
* ``--lqf-loss mse`` (``ce``: cross-entropy, only with ``--solver sgd``);
* ``--preconditioner kfac`` (``none``) for the iterative solvers.

Steps of :meth:`LQF.fit`:

1. swap activations; fit the new head first (``--head-init probe``: the ridge
   linear probe on the pretrained features, its strength chosen on the
   validation split), so the backbone's tangent features are not multiplied
   by a random head;
2. cut the network before the first linearized layer and cache that
   layer's inputs for the training and validation images;
3. solve: ``kernel`` (exact, through the empirical NTK), ``cg`` (matrix-free
   conjugate gradient to a relative residual) or ``sgd`` (mini-batch
   preconditioned SGD/Adam, the paper's route); for ``kernel`` and ``cg``
   the ridge strength is chosen on the validation split from a grid unless
   ``--lqf-ridge`` is given.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lqf.config import option
from lqf.errors import LqfError
from lqf.io import write_json
from lqf.linearization import LinearizedModel, swap_activations
from lqf.linearization.chain import link_of, split_at
from lqf.linearization.lqf_model import PREDICT_MODES, LQFModel
from lqf.methods.base import FitContext, Method, register_method
from lqf.methods.core import CORE, around_core
from lqf.methods.lqf_solve import make_plan, predict_linear, solve_kfac_cg, solve_ridges
from lqf.models.transfer import TransferModel
from lqf.solvers.ridge import GRID, mean_eigenvalue, ridge_path
from lqf.training.evaluate import accuracy, apply

_LAST = re.compile(r"^last-(\d+)$")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SOLVERS = ("auto", "kernel", "cg", "sgd")


@dataclass
class LQFOptions:
    """Options of ``--method lqf``."""

    linearize: str = option(
        "last-3",
        "linearized parameters: all, head, last-K (the last K units + head), "
        "or comma-separated name patterns (e.g. 'features.blocks.6.*,head.*')",
    )
    leaky_slope: float = option(
        0.0, "negative slope of the Leaky-ReLU that replaces ReLU/ReLU6 (0: no swap)", advanced=True
    )
    leaky_clip: bool = option(True, "keep ReLU6's upper clip at 6 when swapping", advanced=True)
    repair_steps: int = option(
        0,
        "after the swap, distil the original network's unit outputs into it for this many steps",
        advanced=True,
    )
    head_init: str = option(
        "probe",
        "linearize around a fitted head (probe) or the random one",
        choices=("probe", "random"),
        advanced=True,
    )
    lqf_loss: str = option(
        "mse",
        "loss: mse (quadratic) or ce (cross-entropy; --solver sgd)",
        choices=("mse", "ce"),
        advanced=True,
    )
    target_scale: float = option(1.0, "MSE targets are target_scale * one-hot", advanced=True)
    lqf_ridge: float | None = option(
        None,
        "ridge lambda on ||dw||^2, relative to the mean eigenvalue of the tangent kernel; "
        "default: chosen on the validation split",
    )
    solver: str = option(
        "auto",
        "kernel (exact: the tangent kernel without J, a Cholesky factorization per ridge), "
        "cg (multi-shift conjugate gradient: every ridge from one Krylov sequence), sgd; "
        "auto: the fastest route that fits --kernel-memory-mb, by predicted time",
        choices=SOLVERS,
    )
    preconditioner: str = option(
        "auto",
        "preconditioner: kfac, none; auto: none for cg (multi-shift), kfac for sgd; "
        "kfac with cg solves each ridge on its own",
        choices=("auto", "kfac", "none"),
        advanced=True,
    )
    damping: float = option(
        0.1, "K-FAC damping, relative to the mean eigenvalue of the K-FAC curvature", advanced=True
    )
    tol: float = option(1e-4, "cg: stop each ridge at this relative residual", advanced=True)
    max_iter: int = option(1000, "cg: at most this many products J^T J v (for the whole grid)", advanced=True)
    lqf_lr: float = option(1e-2, "sgd: learning rate (of the preconditioned step)", advanced=True)
    lqf_optimizer: str = option(
        "sgd",
        "sgd: the optimizer the preconditioned gradient feeds",
        choices=("sgd", "adam"),
        advanced=True,
    )
    predict: str = option(
        "linear",
        "predict with f_lin (linear) or the network at w0 + dw",
        choices=PREDICT_MODES,
        advanced=True,
    )
    kernel_memory_mb: float | None = option(
        None,
        "memory the kernel and cg routes may hold (factors, kernel, factorization), MiB; "
        "default: half the memory available when the solve starts",
        advanced=True,
    )
    around: str | None = option(
        None,
        "linearize around the weights of this finished fine-tuning run (head included) instead of "
        "the pretrained ones; images outside its core can then be forgotten exactly",
    )
    around_fit: str = option(
        "all",
        "with --around: fit every training image (all) or only those outside the core (rest)",
        choices=("all", "rest"),
        advanced=True,
    )
    relinearize: int = option(
        0,
        "solve again this many times, each around the last solution (w0 <- w0 + dw, dw <- 0): "
        "Gauss-Newton steps, each with its own ridge; the result is no longer one convex problem",
        advanced=True,
    )

    def __post_init__(self) -> None:
        if not 0 <= self.leaky_slope < 1:
            raise LqfError(f"--leaky-slope must be in [0, 1), got {self.leaky_slope}")
        if self.repair_steps < 0:
            raise LqfError(f"--repair-steps must be >= 0, got {self.repair_steps}")
        if self.target_scale <= 0:
            raise LqfError(f"--target-scale must be > 0, got {self.target_scale}")
        if self.lqf_ridge is not None and self.lqf_ridge < 0:
            raise LqfError(f"--lqf-ridge must be >= 0, got {self.lqf_ridge}")
        if self.lqf_loss == "ce" and self.solver in ("kernel", "cg"):
            raise LqfError("--lqf-loss ce is not quadratic: use it with --solver sgd")
        if self.relinearize < 0:
            raise LqfError(f"--relinearize must be >= 0, got {self.relinearize}")
        for bad, message in (
            (self.damping < 0, f"--damping must be >= 0, got {self.damping}"),
            (self.tol <= 0, f"--tol must be > 0, got {self.tol}"),
            (self.max_iter < 1, f"--max-iter must be >= 1, got {self.max_iter}"),
            (self.lqf_lr <= 0, f"--lqf-lr must be > 0, got {self.lqf_lr}"),
        ):
            if bad:
                raise LqfError(message)
        if self.around is not None and not os.path.isfile(os.path.join(self.around, "config.json")):
            raise LqfError(f"--around {self.around!r} is not a run directory (no config.json)")
        if self.around is None and self.around_fit != "all":
            raise LqfError("--around-fit needs --around RUN (the fine-tuned core to linearize around)")
        if self.kernel_memory_mb is not None:
            from lqf.resources import total_memory_mb

            total = total_memory_mb()
            if self.kernel_memory_mb <= 0:
                raise LqfError(f"--kernel-memory-mb must be > 0, got {self.kernel_memory_mb:g}")
            if total is not None and self.kernel_memory_mb > total:
                raise LqfError(
                    f"--kernel-memory-mb {self.kernel_memory_mb:g} is more than this machine's "
                    f"{total:.0f} MiB of memory; give at most that, or leave it out (half the free memory)"
                )


def select_linearized(model: TransferModel, spec: str) -> list[str]:
    """Parameter names chosen by ``spec`` (see ``--linearize``), in model order."""
    params = [n for n, _ in model.named_parameters()]
    if spec == "all":
        return params
    units = model.units()
    if spec == "head" or _LAST.match(spec):
        k = 0 if spec == "head" else int(_LAST.match(spec).group(1))
        backbone = units[:-1]
        if k > len(backbone):
            raise LqfError(f"--linearize {spec}: the model has only {len(backbone)} units; use all")
        prefixes = [n for n, _ in backbone[len(backbone) - k :]] + ["head"]
        return [p for p in params if any(p == u or p.startswith(u + ".") for u in prefixes)]
    patterns = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [p for p in params if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]
    if not chosen:
        raise LqfError(f"--linearize {spec!r} matches no parameter; names look like {params[-1]!r}")
    return chosen


@torch.no_grad()
def relinearize(lin: LinearizedModel) -> None:
    """Move the linearization point to the current solution: ``w0 <- w0 + delta``, ``delta <- 0``
    (the model's function is unchanged when it is linear in ``w``, otherwise ``f_lin`` becomes
    ``f(w0 + delta)`` plus its new tangent)."""
    for w, d in zip(lin.w0, lin.delta, strict=True):
        w.add_(d)
        d.zero_()


def fit_probe_head(
    model: TransferModel,
    train: torch.Tensor,
    labels: torch.Tensor,
    val: torch.Tensor | None,
    val_labels: torch.Tensor | None,
) -> float:
    """Set ``model.head`` (``nn.Linear``) to the ridge probe chosen on validation; returns its strength."""
    c = model.head.out_features
    targets = nn.functional.one_hot(labels, c).double()
    scale = mean_eigenvalue(train)
    cands = ridge_path(train, targets, [r * scale for r in GRID])
    if val is None or len(val) == 0:
        best = GRID.index(1.0) if 1.0 in GRID else len(GRID) // 2
    else:
        scores = [accuracy(val.double() @ w + b, val_labels) for w, b in cands]
        best = max(range(len(GRID)), key=lambda i: (scores[i], i))
    w, b = cands[best]
    with torch.no_grad():
        model.head.weight.copy_(w.T.float())
        model.head.bias.copy_(b.float())
    return GRID[best]


def _embedding(model: TransferModel, suffix: nn.Module | None):
    """``x -> features`` on the linear part's inputs: the suffix without its last link (the
    head), or the whole embedding when nothing is cached."""
    if suffix is None:
        return model.embed
    links = list(suffix.children())  # the chain ends with the head (lqf.linearization.chain)
    return nn.Sequential(*links[:-1])


def _apply_tensor(fn, x: torch.Tensor, batch: int, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def _link_input(model: TransferModel, names: list[str], probe: torch.Tensor):
    first = link_of(model, names[0])
    return split_at(model, first, probe) if first is not None else None


@register_method
class LQF(Method):
    """Linearized network, MSE loss, ridge; solved exactly or by preconditioned iterations."""

    name = "lqf"
    Options = LQFOptions
    summary = "linear quadratic fine-tuning: first-order Taylor expansion, MSE, K-FAC, exact solvers"

    def fit(self, model: TransferModel, data, ctx: FitContext) -> LQFModel:
        o: LQFOptions = self.options
        device = ctx.device
        core, core_images = None, None
        if o.around is not None:
            core, data, core_images = around_core(model, o.around, o.around_fit, ctx, data)
        model.to(device).eval()
        original = copy.deepcopy(model) if o.leaky_slope > 0 and o.repair_steps > 0 else None
        swapped = swap_activations(model, o.leaky_slope, o.leaky_clip) if o.leaky_slope > 0 else 0
        ctx.extra["activations_swapped"] = swapped
        if original is not None:
            from lqf.linearization.repair import distill

            images = torch.cat([x for x, _ in data.train.batches(256)]).to(device)
            losses = distill(model, original, images, steps=o.repair_steps, generator=ctx.generator(7))
            ctx.extra["repair_loss"] = [losses[0], losses[-1]]
            del original
        bs = max(ctx.config.batch_size, 256)
        has_val = len(data.val) > 0
        names = select_linearized(model, o.linearize)
        probe = next(iter(data.train.batches(2)))[0].to(device)
        split = _link_input(model, names, probe)
        prefix, suffix = split if split is not None else (None, None)
        # the linear part's inputs, cached once: they also give the probe head its features
        cache = prefix if prefix is not None else nn.Identity()
        xtr = apply(cache, data.train, batch_size=bs, device=device, desc="cache", quiet=ctx.quiet)
        xva = apply(cache, data.val, batch_size=bs, device=device) if has_val else None
        if core is not None and (o.head_init != "probe" or not isinstance(model.head, nn.Linear)):
            ctx.extra["head_init"] = "the --around run's head"
        elif core is not None:
            # the fine-tuned head's outputs are cross-entropy logits, far from the squared loss's
            # one-hot targets: linearize around the ridge probe of the core's features, fitted on
            # the core's images only, so that no image outside the core shapes the point w0
            embed = _embedding(model, suffix)
            xc = apply(cache, core_images, batch_size=bs, device=device)
            fva = _apply_tensor(embed, xva, bs, device) if has_val else None
            ctx.extra["head_ridge_relative"] = fit_probe_head(
                model,
                _apply_tensor(embed, xc, bs, device),
                core_images.labels,
                fva,
                data.val.labels if has_val else None,
            )
            ctx.extra["head_init"] = "ridge probe of the core's features on the core's images"
        elif o.head_init == "probe" and not isinstance(model.head, nn.Linear):
            # e.g. a fixed classifier: its matrix is a buffer (never linearized), its scale
            # and bias are parameters and are linearized with the head; they start as built
            ctx.extra["head_init"] = f"{type(model.head).__name__} as built"
        elif o.head_init == "probe":
            embed = _embedding(model, suffix)
            ftr = _apply_tensor(embed, xtr, bs, device)
            fva = _apply_tensor(embed, xva, bs, device) if has_val else None
            ctx.extra["head_ridge_relative"] = fit_probe_head(
                model, ftr, data.train.labels, fva, data.val.labels if has_val else None
            )
        spec = {
            "linearize": o.linearize,
            "leaky_slope": o.leaky_slope,
            "leaky_clip": o.leaky_clip,
            "predict": o.predict,
            "split": split is not None,
        }
        lqf_model = LQFModel(model, names, prefix, suffix, predict=o.predict, spec=spec).to(device)
        lin = lqf_model.linear
        ctx.extra["linearized_parameters"] = lin.num_linearized()
        ctx.extra["cached_prefix"] = split is not None
        start = time.perf_counter()
        c = model.num_classes
        targets = o.target_scale * nn.functional.one_hot(data.train.labels, c).float()
        yva = data.val.labels if has_val else None
        ridges = [o.lqf_ridge] if o.lqf_ridge is not None else list(RIDGE_GRID)
        if not has_val and o.lqf_ridge is None:
            ridges = [1e-2]
        plan = None
        kfac_cg = o.solver == "cg" and o.preconditioner == "kfac"
        if o.solver != "sgd" and not kfac_cg:
            plan = make_plan(o, lin, xtr, len(xva) if has_val else 0, len(ridges))
            ctx.extra["solver_plan"] = plan.record()
        ctx.extra["solver"] = plan.route if plan is not None else o.solver
        steps = []
        for step in range(1 + o.relinearize):
            if step:
                relinearize(lin)
            if o.solver == "sgd":
                from lqf.solvers.minibatch import fit_minibatch

                fit_minibatch(lqf_model, data, ctx, o, xtr)
                chosen = None
            elif kfac_cg:
                chosen = solve_kfac_cg(o, lin, xtr, targets, xva, yva, ridges, ctx, step + 1)
            else:
                chosen = solve_ridges(o, lin, plan, xtr, targets, xva, yva, ridges, ctx, step + 1)
            if o.relinearize:
                if not has_val:
                    val = None
                elif chosen is None:  # sgd: no ridge grid, so no validation accuracy yet
                    val = accuracy(predict_linear(lin, xva, tuple(lin.delta)), data.val.labels)
                else:
                    val = chosen["val_accuracy"]
                ridge = None if chosen is None else chosen["ridge_relative"]  # sgd: no grid
                steps.append({"ridge_relative": ridge, "val_accuracy": val})
        if steps:
            ctx.extra["relinearize_steps"] = steps
        if plan is not None:
            ctx.extra.setdefault("notes", []).insert(
                0,
                f"solver {plan.route}"
                + (" (streamed)" if plan.storage == "streamed" else "")
                + f": {plan.reason}; ridge {ctx.extra['ridge_relative']:g} chosen on validation "
                f"of {len(ridges)}",
            )
        ctx.extra["solve_seconds"] = time.perf_counter() - start
        if core is not None and ctx.run is not None:
            write_json(ctx.run.file(CORE), {**core, "fit": o.around_fit})
        return lqf_model

    @classmethod
    def rebuild(cls, model: TransferModel, spec: dict[str, Any], info: dict[str, Any]) -> LQFModel:
        """The :class:`LQFModel` structure of a saved run around ``model`` (random weights)."""
        model.eval()
        if spec.get("leaky_slope", 0) > 0:
            swap_activations(model, spec["leaky_slope"], spec.get("leaky_clip", True))
        names = select_linearized(model, spec["linearize"])
        size = int(info.get("image_size", 64))
        split = _link_input(model, names, torch.rand(2, 3, size, size)) if spec.get("split") else None
        prefix, suffix = split if split is not None else (None, None)
        return LQFModel(model, names, prefix, suffix, predict=spec.get("predict", "linear"), spec=spec)
