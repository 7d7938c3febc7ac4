"""Transferability scores computed on a target task's few-shot training split alone.

Three scores, all from ``n`` labelled training images and nothing else (no validation or
test data, no training of the network):

* **tangent gain** (ours, from the linear-teacher theory): a linearized network is a linear
  regression in its tangent features ``J(x)``, and gradient descent from the pretrained
  weights ``w0`` on the squared loss converges to ``w0 + J^+ (Y - f0)`` (ridge towards
  ``w0`` for ``lambda > 0``). Its target risk is the theory's ``||Sigma^{1/2} Q delta||^2`` plus
  a noise term, which involves the *unseen* directions and so cannot be read off the training
  split directly; we estimate it by K-fold cross-fitting (every fold refits the probe head that
  the network is linearized around), in the tangent features of the head and the last
  feature block (1x1 convolution, BatchNorm, activation, global average pooling), and compare
  it with the same estimate for the ridge linear probe on the pooled features. The score is
  ``risk(probe) - risk(tangent)``: positive when the theory expects linearized fine-tuning of
  head + last block to beat the probe.
* **LogME** and **LEEP**, the scores from the literature (:mod:`lqf.theory.scores`).

Shapes: ``n`` samples, ``C`` target classes, ``D`` pooled features, ``q`` block parameters
per channel, ``Z`` source classes. docs/theory.md (section 6) has the derivations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lqf.errors import LqfError
from lqf.theory.scores import leep, logme, source_probabilities

#: relative ridge grids: probe (relative to the mean non-zero eigenvalue of Phi_c^T Phi_c, as
#: the linear probe) and tangent model (relative to the mean eigenvalue of the tangent kernel;
#: ``inf`` is "no update": the linearized model stays at the probe)
PROBE_GRID = tuple(10.0**k for k in range(-6, 5))
TANGENT_GRID = (*(10.0**k for k in range(-6, 3)), math.inf)


@dataclass
class TangentFeatures:
    """What the tangent kernel of head + last block needs, per training image.

    Attributes:
        phi: pooled features ``phi(x)`` ``(n, D)``, float64.
        blocks: ``B`` ``(n, D, q)``, float64: ``B[i, k]`` is the gradient of ``phi_k(x_i)``
            with respect to the parameters of output channel ``k`` of the last block (row ``k``
            of the 1x1 convolution, its bias if any, the BatchNorm scale and shift). A channel's
            parameters reach only ``phi_k``, so these rows are the whole Jacobian of ``phi``.
    """

    phi: torch.Tensor
    blocks: torch.Tensor


def last_block(model: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module]:
    """``(conv, bn, act)`` of a backbone that ends in 1x1 conv -> BatchNorm -> act -> average pool.

    ``model``: a :class:`~lqf.models.TransferModel` (its ``features``) or a bare backbone with
    ``conv_head`` and ``bn2`` children, as timm's EfficientNet/MobileNet families have.
    """
    features = getattr(model, "features", model)
    conv, bn = getattr(features, "conv_head", None), getattr(features, "bn2", None)
    pool = getattr(features, "global_pool", None)
    ok = (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.groups == 1
        and isinstance(bn, nn.BatchNorm2d)
        and bn.affine
        and bn.track_running_stats
        and getattr(pool, "pool_type", "avg") == "avg"
    )
    if not ok:
        raise LqfError(
            f"transfer scores need a backbone ending in conv_head (1x1 conv) -> bn2 (BatchNorm) -> "
            f"average pooling, as timm's EfficientNet models; {type(features).__name__} does not"
        )
    act = getattr(bn, "act", None) or getattr(features, "act2", None) or nn.Identity()
    return conv, bn, act


def _block_gradients(
    z: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi, B)`` for inputs ``z`` ``(b, Cin, H, W)`` of the 1x1 convolution, in float64.

    With ``s`` the spatial positions (``S = H W``), ``sigma_k = sqrt(var_k + eps)``,
    ``h_ks = (W_k . z_s + c_k - m_k) / sigma_k`` and ``u_ks = gamma_k h_ks + beta_k``:

        phi_k      = (1/S) sum_s a(u_ks)
        d/dW_k     = (1/S) sum_s a'(u_ks) (gamma_k / sigma_k) z_s      (Cin,)
        d/dc_k     = (1/S) sum_s a'(u_ks) (gamma_k / sigma_k)          (conv bias, if any)
        d/dgamma_k = (1/S) sum_s a'(u_ks) h_ks
        d/dbeta_k  = (1/S) sum_s a'(u_ks)
    """
    zz = z.double().flatten(2)  # (b, Cin, S)
    w = conv.weight.detach().double().flatten(1)  # (D, Cin)
    pre = torch.einsum("kc,bcs->bks", w, zz)
    if conv.bias is not None:
        pre = pre + conv.bias.detach().double()[None, :, None]
    sigma = (bn.running_var.detach().double() + bn.eps).sqrt()
    h = (pre - bn.running_mean.detach().double()[None, :, None]) / sigma[None, :, None]
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    u = (gamma[None, :, None] * h + beta[None, :, None]).requires_grad_(True)
    with torch.enable_grad():
        a = act(u.clone())
        (da,) = torch.autograd.grad(a.sum(), u)
    s = zz.shape[2]
    phi = a.detach().mean(2)
    scale = (gamma / sigma)[None, :, None]
    parts = [torch.einsum("bks,bcs->bkc", da * scale, zz) / s]
    if conv.bias is not None:
        parts.append((da * scale).mean(2, keepdim=True))
    parts += [(da * h).mean(2, keepdim=True), da.mean(2, keepdim=True)]
    return phi, torch.cat(parts, dim=2)


@torch.no_grad()
def tangent_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> TangentFeatures:
    """Pooled features and last-block gradients of ``images`` ``(n, 3, S, S)`` in ``[0, 1]``.

    ``model``: a :class:`~lqf.models.TransferModel` in eval mode (BatchNorm uses its running
    statistics, as in the linearization). ``phi`` is checked against ``model.embed`` to 1e-4
    relative, which verifies that the backbone does end in the assumed block.
    """
    conv, bn, act = last_block(model)
    captured: list[torch.Tensor] = []
    hook = conv.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    phis, grads = [], []
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            captured.clear()
            ref = model.embed(images[i : i + batch_size])
            phi, b = _block_gradients(captured[0], conv, bn, act)
            if not torch.allclose(phi, ref.double(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()) + 1e-6):
                raise LqfError("the pooled features are not avg-pool(act(bn2(conv_head(.)))) for this model")
            phis.append(phi)
            grads.append(b)
    finally:
        hook.remove()
    return TangentFeatures(torch.cat(phis), torch.cat(grads))


def block_gram(blocks: torch.Tensor) -> torch.Tensor:
    """``G`` ``(D, n, n)`` with ``G[k, i, j] = B[i, k] . B[j, k]`` for ``blocks`` ``(n, D, q)``."""
    bt = blocks.permute(1, 0, 2)
    return bt @ bt.transpose(1, 2)


def tangent_kernel(
    phi: torch.Tensor,
    gram: torch.Tensor,
    head: torch.Tensor,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Empirical tangent kernel of head + last block, linearized at head weights ``head`` ``(C, D)``.

    With ``f_c(x) = sum_k W_ck phi_k(x) + b_c`` and the block parameters entering only through
    ``phi``, the Jacobian rows are ``d f_c / d(W, b) = e_c (x) [phi(x), 1]`` and
    ``d f_c / d theta_k = W_ck B_k(x)``, so

        K[(i, c), (j, c')] = delta_cc' (phi_i . phi_j + 1) + sum_k W_ck W_c'k G[k, i, j].

    Args:
        phi: ``(n, D)``; gram: ``G`` ``(D, n, n)`` from :func:`block_gram`.
        rows, cols: sample indices (default all).

    Returns:
        ``(len(rows) C, len(cols) C)``, rows ordered sample-major (index ``i C + c``).
    """
    n = phi.shape[0]
    rows = torch.arange(n) if rows is None else rows
    cols = torch.arange(n) if cols is None else cols
    w = head.double()
    c, d = w.shape
    g = gram[:, rows][:, :, cols]  # (D, r, s)
    pairs = (w[:, None, :] * w[None, :, :]).reshape(c * c, d)
    kb = (pairs @ g.reshape(d, -1)).reshape(c, c, len(rows), len(cols)).permute(2, 0, 3, 1)
    lin = phi[rows].double() @ phi[cols].double().T + 1.0
    kb = kb + lin[:, None, :, None] * torch.eye(c, dtype=torch.float64)[None, :, None, :]
    return kb.reshape(len(rows) * c, len(cols) * c)


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """Held-out index sets: each class's samples dealt round-robin (in a seeded order) to the folds."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for j, i in enumerate(idx.tolist()):
            out[j % folds].append(i)
    return [torch.tensor(sorted(f), dtype=torch.long) for f in out if f]


def _probe(phi: torch.Tensor, y: torch.Tensor, rel: list[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from lqf.solvers.ridge import mean_eigenvalue, ridge_path

    scale = mean_eigenvalue(phi)
    return ridge_path(phi, y, [r * scale for r in rel])


def cross_fit(
    feats: TangentFeatures,
    labels: torch.Tensor,
    num_classes: int,
    *,
    folds: int = 10,
    seed: int = 0,
    probe_grid: tuple[float, ...] = PROBE_GRID,
    tangent_grid: tuple[float, ...] = TANGENT_GRID,
) -> dict:
    """K-fold estimates of the target risk of the ridge probe and of the linearized head + block.

    For each fold ``F`` with training part ``T``:

    1. probe: ridge on centred ``phi_T`` towards one-hot ``Y_T`` for every ``lambda`` of
       ``probe_grid`` (relative, as :mod:`lqf.methods.linear_probe`); predictions on ``F``;
    2. tangent model: linearize at the probe head ``(W, b)`` of the ``lambda_p`` chosen in step
       1 (minimum K-fold squared error), ``f0 = phi W^T + b``, and fit the residual
       ``R_T = Y_T - f0(T)`` by kernel ridge with the tangent kernel ``K`` of
       :func:`tangent_kernel` at ``W`` (the ridge-towards-``w0`` solution of the paper's setting,
       in function space): ``f(F) = f0(F) + K_FT (K_TT + lambda s I)^{-1} R_T`` with ``s`` the
       mean eigenvalue of ``K_TT``; ``lambda -> 0`` is the GD limit ``w0 + J^+ (Y - f0)``
       (the first grid value stands for it), ``lambda = inf`` leaves ``f = f0``.

    The squared error is ``sum_c (f_c(x) - y_c)^2`` per image, averaged over all held-out
    images; ``lambda`` of each model is the grid value with the least K-fold squared error.

    Returns:
        a dict with ``probe_mse``, ``tangent_mse``, ``tangent_gd_mse`` (smallest ``lambda``),
        the matching accuracies, the chosen relative ``lambda``s and the gains ``gain_mse =
        probe_mse - tangent_mse``, ``gain_gd_mse = probe_mse - tangent_gd_mse``,
        ``gain_accuracy = tangent_accuracy - probe_accuracy`` and ``gain_gd_accuracy``.
    """
    n = len(labels)
    y = nn.functional.one_hot(labels, num_classes).double()
    phi = feats.phi.double()
    gram = block_gram(feats.blocks.double())
    parts = stratified_folds(labels, folds, seed)
    if len(parts) < 2:
        raise LqfError(f"cross-fitting needs at least 2 folds; got {len(parts)} from {n} samples")
    everything = torch.arange(n)
    trains = [everything[~torch.isin(everything, held)] for held in parts]
    # 1. probe
    probe_pred = torch.zeros(len(probe_grid), n, num_classes, dtype=torch.float64)
    heads = []
    for held, train in zip(parts, trains, strict=True):
        sols = _probe(phi[train], y[train], list(probe_grid))
        heads.append(sols)
        for r, (w, b) in enumerate(sols):
            probe_pred[r, held] = phi[held] @ w + b
    probe_mse = ((probe_pred - y) ** 2).sum(2).mean(1)
    rp = int(torch.argmin(probe_mse))
    # 2. tangent model around the chosen probe head of each fold
    tan_pred = torch.zeros(len(tangent_grid), n, num_classes, dtype=torch.float64)
    for held, train, sols in zip(parts, trains, heads, strict=True):
        w, b = sols[rp]  # w (D, C)
        f0 = phi @ w + b
        resid = (y[train] - f0[train]).reshape(-1)
        ktt = tangent_kernel(phi, gram, w.T, train, train)
        kft = tangent_kernel(phi, gram, w.T, held, train)
        evals, evecs = torch.linalg.eigh(ktt)
        evals = evals.clamp_min(0.0)
        s = float(evals.mean())
        proj = evecs.T @ resid
        for r, rel in enumerate(tangent_grid):
            if math.isinf(rel):
                tan_pred[r, held] = f0[held]
                continue
            alpha = evecs @ (proj / (evals + rel * s))
            tan_pred[r, held] = f0[held] + (kft @ alpha).reshape(len(held), num_classes)
    tan_mse = ((tan_pred - y) ** 2).sum(2).mean(1)
    rt = int(torch.argmin(tan_mse))

    def acc(pred: torch.Tensor) -> float:
        return float((pred.argmax(1) == labels).double().mean())

    out = {
        "folds": len(parts),
        "probe_ridge_relative": probe_grid[rp],
        "tangent_ridge_relative": tangent_grid[rt],
        "probe_mse": float(probe_mse[rp]),
        "tangent_mse": float(tan_mse[rt]),
        "tangent_gd_mse": float(tan_mse[0]),
        "probe_accuracy": acc(probe_pred[rp]),
        "tangent_accuracy": acc(tan_pred[rt]),
        "tangent_gd_accuracy": acc(tan_pred[0]),
    }
    out["gain_mse"] = out["probe_mse"] - out["tangent_mse"]
    out["gain_gd_mse"] = out["probe_mse"] - out["tangent_gd_mse"]
    out["gain_accuracy"] = out["tangent_accuracy"] - out["probe_accuracy"]
    out["gain_gd_accuracy"] = out["tangent_gd_accuracy"] - out["probe_accuracy"]
    return out


def transfer_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    model_name: str | None = None,
    folds: int = 10,
    seed: int = 0,
) -> dict:
    """All scores for one training split: the cross-fitted tangent gain, LogME and LEEP.

    ``images`` ``(n, 3, S, S)`` in ``[0, 1]``, ``labels`` ``(n,)``; ``model`` a
    :class:`~lqf.models.TransferModel`. LEEP is ``None`` unless ``model_name`` is a built-in model.
    """
    feats = tangent_features(model, images)
    out = cross_fit(feats, labels, num_classes, folds=folds, seed=seed)
    out["logme"] = logme(feats.phi, labels, num_classes)
    out["leep"] = None
    if model_name is not None:
        from lqf.models.efficientnet_lite import VARIANTS

        if model_name in VARIANTS:
            out["leep"] = leep(source_probabilities(model_name, feats.phi), labels, num_classes)
    out["block_parameters"] = int(feats.blocks.shape[1] * feats.blocks.shape[2])
    return out
