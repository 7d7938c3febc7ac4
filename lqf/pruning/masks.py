"""Magnitude masks that stay applied through training, and their bookkeeping.

For a layer with weight ``W`` (``n`` entries) and pruning fraction
``theta in [0, 1]`` the mask keeps the ``n - k`` entries of largest ``|W|``,
``k = round(theta * n)``; ties are broken by position (a stable sort), so the
number kept is exact. :func:`global_masks` instead ranks ``|W|`` across all
layers at once (one threshold for the whole network).

:class:`MaskSet` keeps pruned weights at zero while a model trains:

* a gradient hook multiplies ``dL/dW`` by the mask, so optimizer statistics
  (Adam moments, SGD momentum) only ever see zeros for pruned entries;
* an optimizer post-step hook re-applies ``W <- W * mask`` after every step,
  so nothing the optimizer does (decoupled weight decay, momentum built up
  before the entry was pruned) can bring a pruned weight back.

Compression follows the paper's definition: parameters in the prunable layers
divided by the parameters kept there, ``rate = N / N_kept``.

>>> import torch
>>> w = torch.tensor([[0.1, -3.0], [2.0, 0.5]])
>>> magnitude_mask(w, 0.5).int().tolist()
[[0, 1], [1, 0]]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from lqf.pruning.layers import PrunableLayer


def pruned_count(numel: int, theta: float) -> int:
    """``k = round(theta * n)`` entries pruned from a layer of ``n`` (``0 <= k <= n``)."""
    return min(numel, max(0, int(round(float(theta) * numel))))


def magnitude_mask(weight: torch.Tensor, theta: float) -> torch.Tensor:
    """Boolean mask (shape of ``weight``) keeping all but the ``round(theta * n)`` smallest ``|w|``."""
    k = pruned_count(weight.numel(), theta)
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:k]] = False
    return mask.view_as(weight)


def layer_masks(layers: list[PrunableLayer], theta: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer magnitude masks; ``theta`` maps each layer's *group* to its fraction."""
    return {layer.name: magnitude_mask(layer.module.weight, theta[layer.group]) for layer in layers}


def global_masks(layers: list[PrunableLayer], fraction: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold across all layers, pruning ``round(fraction * N)`` weights in all."""
    flat = torch.cat([layer.module.weight.detach().abs().flatten() for layer in layers])
    k = pruned_count(flat.numel(), fraction)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    masks, start = {}, 0
    for layer in layers:
        n = layer.numel
        masks[layer.name] = keep[start : start + n].view_as(layer.module.weight)
        start += n
    return masks


@dataclass
class LayerCount:
    """Parameters of one pruned weight: ``total`` and ``kept`` (non-pruned)."""

    name: str
    group: str
    total: int
    kept: int

    @property
    def fraction_pruned(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0


@dataclass
class Compression:
    """Bookkeeping over all prunable layers.

    ``rate = total / kept`` (the compression rate, 1 when nothing is pruned);
    ``removed = 1 - kept / total`` (the fraction of parameters removed).
    """

    layers: list[LayerCount] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.layers)

    @property
    def kept(self) -> int:
        return sum(c.kept for c in self.layers)

    @property
    def rate(self) -> float:
        return self.total / self.kept if self.kept else float("inf")

    @property
    def removed(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {
            "params_prunable": self.total,
            "params_kept": self.kept,
            "compression": self.rate,
            "removed_fraction": self.removed,
            "layers": [
                {"name": c.name, "group": c.group, "total": c.total, "kept": c.kept} for c in self.layers
            ],
        }


def predicted_compression(layers: list[PrunableLayer], theta: Mapping[str, float]) -> Compression:
    """The compression ``theta`` gives, counted without building masks (equal to :meth:`MaskSet.counts`)."""
    return Compression(
        [
            LayerCount(
                layer.name,
                layer.group,
                layer.numel,
                layer.numel - pruned_count(layer.numel, theta[layer.group]),
            )
            for layer in layers
        ]
    )


def theta_for_compression(rate: float) -> float:
    """The fraction that removes ``1 - 1 / rate`` of the parameters (``rate >= 1``)."""
    return 1.0 - 1.0 / rate


class MaskSet:
    """Masks on the prunable layers of one model, kept applied through training.

    Args:
        layers: from :func:`~lqf.pruning.layers.find_prunable`.

    Example::

        masks = MaskSet(layers)
        masks.update(layer_masks(layers, theta))   # prunes (W <- W * mask)
        opt = torch.optim.AdamW(model.parameters(), weight_decay=0.01)
        handle = masks.attach(opt)                  # pruned weights stay zero
        ...                                         # train
        handle.remove()
    """

    def __init__(self, layers: list[PrunableLayer]) -> None:
        self.layers = list(layers)
        self.masks: dict[str, torch.Tensor] = {
            layer.name: torch.ones_like(layer.module.weight, dtype=torch.bool) for layer in self.layers
        }

    def update(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replace the masks of the named layers and apply them."""
        for layer in self.layers:
            if layer.name in masks:
                mask = masks[layer.name].to(device=layer.module.weight.device, dtype=torch.bool)
                if mask.shape != layer.module.weight.shape:
                    raise ValueError(
                        f"mask of {layer.name} has shape {tuple(mask.shape)}, "
                        f"the weight {tuple(layer.module.weight.shape)}"
                    )
                self.masks[layer.name] = mask
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """``W <- W * mask`` for every layer."""
        for layer in self.layers:
            layer.module.weight.mul_(self.masks[layer.name])

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> _Handles:
        """Mask gradients and re-apply the masks after each ``optimizer.step()``."""
        handles = []
        for layer in self.layers:
            name = layer.name
            handles.append(layer.module.weight.register_hook(lambda g, name=name: g * self.masks[name]))
        if optimizer is not None:
            handles.append(optimizer.register_step_post_hook(lambda *_: self.apply()))
        return _Handles(handles)

    def counts(self) -> Compression:
        """Parameters total and kept per layer, counted from the masks."""
        return Compression(
            [
                LayerCount(layer.name, layer.group, layer.numel, int(self.masks[layer.name].sum()))
                for layer in self.layers
            ]
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: mask.cpu().clone() for name, mask in self.masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.update(state)


class _Handles:
    """Removable hooks (``remove()`` detaches all)."""

    def __init__(self, handles: list) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
