"""Repair after the activation swap: distil the original network into the swapped one.

Replacing ReLU by Leaky-ReLU changes what a pretrained network computes. The
repair trains the swapped network to reproduce the original one's
intermediate features on unlabelled images (``sum_u ||h_u(x) - h_u^orig(x)||^2 /
||h_u^orig(x)||^2`` over the outputs ``h_u`` of its units, averaged over a
batch) with Adam, before the network is linearized. Every backbone weight is
trained by default; ``params="norm"`` trains only BatchNorm scales and shifts.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lqf.models.transfer import TransferModel


def distill(
    swapped: TransferModel,
    original: TransferModel,
    images: torch.Tensor,
    *,
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 1e-4,
    params: str = "all",
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train ``swapped`` in place towards ``original`` on ``images`` ``(N, 3, S, S)`` in ``[0, 1]``.

    Both stay in eval mode (BatchNorm uses running statistics). Returns the loss per step.
    """
    original = copy.deepcopy(original).eval()
    swapped.eval()
    units = [name for name, _ in swapped.units()][:-1]  # the head is not a feature
    mods_s = dict(swapped.named_modules())
    mods_o = dict(original.named_modules())
    feats: dict[str, dict[str, torch.Tensor]] = {"s": {}, "o": {}}
    handles = []
    for name in units:
        handles.append(
            mods_s[name].register_forward_hook(lambda m, i, o, n=name: feats["s"].__setitem__(n, o))
        )
        handles.append(
            mods_o[name].register_forward_hook(lambda m, i, o, n=name: feats["o"].__setitem__(n, o))
        )
    if params == "norm":
        train = [
            p
            for m in swapped.features.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters()
        ]
    else:
        train = list(swapped.features.parameters())
    flags = [(p, p.requires_grad) for p in swapped.parameters()]
    for p in swapped.parameters():
        p.requires_grad_(False)
    for p in train:
        p.requires_grad_(True)
    opt = torch.optim.Adam(train, lr=lr)
    losses = []
    try:
        for _ in range(steps):
            idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=generator)
            x = images[idx]
            with torch.no_grad():
                original.embed(x)
            swapped.embed(x)
            loss = sum(
                (feats["s"][n] - feats["o"][n]).pow(2).mean() / feats["o"][n].pow(2).mean().clamp_min(1e-12)
                for n in units
            ) / len(units)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return losses
