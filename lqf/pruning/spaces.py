"""What a search round searches over: the map from a point ``theta`` to masks.

Two spaces, both built from the weights at the start of a round (they stay
fixed while its trials run):

``fraction`` (:class:`FractionSpace`)
    One pruning fraction per layer group, ``theta_g in [0, theta_max]``; each
    layer of group ``g`` loses the ``round(theta_g n)`` smallest ``|w|`` of its
    own ``n`` weights. A pruned weight is 0, so a later round with a smaller
    fraction gives it back (it restarts from 0).

``threshold`` (:class:`ThresholdSpace`)
    One global magnitude threshold, scaled per group. ``step in [1, max_step]``
    says how much more compressed one threshold across all layers would make
    the current network: ``t(step)`` is the magnitude below which all but
    ``N / (rate_0 step)`` of the ``N`` prunable weights lie (``rate_0``: the
    current compression). Group ``g`` is pruned at ``t(step) f^{s_g}`` with
    ``s_g in [-1, 1]`` (``f = group_factor``)::

        keep w  <=>  |w| > t(step) * f ** s_g

    ``s = 0`` is global magnitude pruning, so the global threshold lies in the
    space and the search refines it group by group. Pruned weights are 0 and
    every threshold is ``>= 0``, so they stay pruned: masks only grow from round
    to round (gradual pruning), and ``step = 1, s = 0`` changes nothing.

Both report the exact compression of a point without building its masks
(:meth:`compression`), equal to the count of its masks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lqf.pruning.layers import PrunableLayer, groups_of
from lqf.pruning.masks import (
    Compression,
    LayerCount,
    global_masks,
    layer_masks,
    predicted_compression,
    theta_for_compression,
)

SPACES = ("threshold", "fraction")
STEP = "step"


class FractionSpace:
    """One pruning fraction per group (see the module docstring)."""

    name = "fraction"

    def __init__(self, layers: list[PrunableLayer], theta_max: float = 0.95) -> None:
        self.layers, self.theta_max = layers, theta_max
        self.groups = groups_of(layers)

    def bounds(self) -> dict[str, tuple[float, float, bool]]:
        """``name -> (low, high, log)`` of every search dimension."""
        return {g: (0.0, self.theta_max, False) for g in self.groups}

    def identity(self) -> dict[str, float]:
        """The point that prunes nothing more than the current weights' zeros."""
        return dict.fromkeys(self.groups, 0.0)

    def masks(self, theta: Mapping[str, float]) -> dict[str, torch.Tensor]:
        return layer_masks(self.layers, theta)

    def compression(self, theta: Mapping[str, float]) -> Compression:
        return predicted_compression(self.layers, theta)

    def carry(self, theta: Mapping[str, float]) -> dict[str, float]:
        """A point of the previous round as a first trial of this one: fractions are absolute, so
        the point is reused as it is."""
        return dict(theta)

    def starts(self, count: int) -> list[dict[str, float]]:
        """Per-group fractions that one global magnitude threshold gives, at ``count`` compression
        rates spaced geometrically from 1.5x to 8x (on the current weights)."""
        if count <= 0:
            return []
        rates = [1.5 * (8 / 1.5) ** (i / max(1, count - 1)) for i in range(count)] if count > 1 else [3.0]
        points = []
        for rate in rates:
            masks = global_masks(self.layers, theta_for_compression(rate))
            pruned: dict[str, list[int]] = {}
            for layer in self.layers:
                done = pruned.setdefault(layer.group, [0, 0])
                done[0] += int((~masks[layer.name]).sum())
                done[1] += layer.numel
            points.append({g: min(self.theta_max, k / n) for g, (k, n) in pruned.items()})
        return points


class ThresholdSpace:
    """A global magnitude threshold with one factor per group (see the module docstring).

    Args:
        layers: the prunable layers; their current weights define the space.
        max_step: largest compression factor one round may add, ``step <= max_step``.
        group_factor: ``f``: a group's threshold is between ``t / f`` and ``t f``.
    """

    name = "threshold"

    def __init__(self, layers: list[PrunableLayer], max_step: float = 3.0, group_factor: float = 2.0) -> None:
        if max_step <= 1 or group_factor < 1:
            raise ValueError(f"need max_step > 1 and group_factor >= 1, got {max_step}, {group_factor}")
        self.layers, self.max_step, self.group_factor = layers, float(max_step), float(group_factor)
        self.groups = groups_of(layers)
        if STEP in self.groups:
            raise ValueError(f"a layer group may not be called {STEP!r}")
        with torch.no_grad():
            self.sorted = [layer.module.weight.detach().abs().flatten().sort().values for layer in layers]
            self.all = torch.cat([s.cpu() for s in self.sorted]).sort().values
        self.total = self.all.numel()
        self.nonzero = int((self.all > 0).sum())
        self.rate0 = self.total / max(1, self.nonzero)

    def bounds(self) -> dict[str, tuple[float, float, bool]]:
        return {STEP: (1.0, self.max_step, True)} | {g: (-1.0, 1.0, False) for g in self.groups}

    def identity(self) -> dict[str, float]:
        """The point that prunes nothing more than the current weights' zeros."""
        return {STEP: 1.0} | dict.fromkeys(self.groups, 0.0)

    def global_threshold(self, step: float) -> float:
        """``t(step)``: one threshold across all layers that leaves ``N / (rate_0 step)`` weights."""
        keep = min(self.nonzero, max(1, int(round(self.total / (self.rate0 * float(step))))))
        pruned = self.total - keep
        return float(self.all[pruned - 1]) if pruned > 0 else 0.0

    def thresholds(self, theta: Mapping[str, float]) -> list[float]:
        """The threshold of every layer (in ``layers`` order)."""
        t = self.global_threshold(theta[STEP])
        return [t * self.group_factor ** float(theta[layer.group]) for layer in self.layers]

    def masks(self, theta: Mapping[str, float]) -> dict[str, torch.Tensor]:
        return {
            layer.name: layer.module.weight.detach().abs() > thr
            for layer, thr in zip(self.layers, self.thresholds(theta), strict=True)
        }

    def compression(self, theta: Mapping[str, float]) -> Compression:
        counts = []
        for layer, s, thr in zip(self.layers, self.sorted, self.thresholds(theta), strict=True):
            below = int(torch.searchsorted(s, torch.tensor(thr, dtype=s.dtype, device=s.device), right=True))
            counts.append(LayerCount(layer.name, layer.group, layer.numel, layer.numel - below))
        return Compression(counts)

    def carry(self, theta: Mapping[str, float]) -> dict[str, float]:
        """A point of the previous round as a first trial of this one: its group factors ``s``
        (which layers to prune harder) are kept, its ``step`` is not. A step is relative to the
        weights of its round, so the previous round's step would prune as much again on top of
        it; the carried point takes the middle step ``sqrt(max_step)`` and the search moves it."""
        return {STEP: self.max_step**0.5} | {g: float(theta[g]) for g in self.groups}

    def starts(self, count: int) -> list[dict[str, float]]:
        """Global magnitude pruning (``s = 0``) at ``count`` steps spaced geometrically from 1.25
        to ``max_step``."""
        if count <= 0:
            return []
        low = min(1.25, self.max_step)
        steps = [low * (self.max_step / low) ** (i / max(1, count - 1)) for i in range(count)]
        return [{STEP: s} | dict.fromkeys(self.groups, 0.0) for s in steps]


def make_space(
    kind: str, layers: list[PrunableLayer], *, theta_max: float, max_step: float, group_factor: float
):
    """The search space ``kind`` (``threshold`` or ``fraction``) on the current weights."""
    if kind == "threshold":
        return ThresholdSpace(layers, max_step=max_step, group_factor=group_factor)
    if kind == "fraction":
        return FractionSpace(layers, theta_max=theta_max)
    raise ValueError(f"unknown search space {kind!r}; valid: {', '.join(SPACES)}")
