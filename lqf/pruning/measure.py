"""What a search trial measures: the accuracy of masked weights on a validation subset.

The validation split is the only data the search and the candidate choice
see: :func:`held_out` sets part of it aside to judge the fine-tuned
candidates (``--select-val``), :func:`validation_subset` is what each trial
evaluates on, and :class:`MaskedAccuracy` applies a trial's masks, optionally
re-estimates BatchNorm statistics on fixed training batches
(:func:`bn_batches`), evaluates and restores the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lqf.errors import LqfError
from lqf.pruning.layers import PrunableLayer, find_prunable
from lqf.pruning.masks import layer_masks


def validation_subset(data, size: int | None):
    """The first ``size`` images of a stratified subsample of ``data.val`` (all if ``None``)."""
    if size is None or size >= len(data.val):
        return data.val
    from lqf.data.splits import stratified_subsample

    idx = stratified_subsample(data.val.labels.numpy(), torch.arange(len(data.val)).numpy(), size)
    return data.val.subset(idx)


def held_out(val, per_class: int):
    """Split ``val`` into ``(search, select)``: the last ``per_class`` images of every class
    (in the split's order) form ``select``, the rest ``search``; ``(val, None)`` if ``per_class`` is 0.

    Raises:
        LqfError: when a class would have no image left for the search.
    """
    if per_class <= 0:
        return val, None
    labels = val.labels
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(len(val.classes)):
        where = torch.nonzero(labels == c).flatten()
        if len(where) <= per_class:
            raise LqfError(
                f"--select-val {per_class} leaves no validation image of class {val.classes[c]!r} for "
                f"the search (it has {len(where)}): use a smaller --select-val or a larger --extra-val"
            )
        chosen[where[-per_class:]] = True
    return val.subset(~chosen), val.subset(chosen)


class MaskedAccuracy:
    """``theta -> accuracy`` of the current weights with ``theta``'s masks (weights restored after).

    Pruning shifts the statistics of every activation, so the BatchNorm running
    statistics of the unpruned weights misjudge a pruned network that
    fine-tuning (which re-estimates them) would largely repair. With
    ``bn_batches > 0`` each trial first re-estimates them (cumulative average)
    on that many fixed training batches, evaluates, and restores them.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[PrunableLayer],
        images,
        batch_size: int,
        device: str,
        bn_images: list[torch.Tensor] = (),
    ):
        self.model, self.layers, self.images = model, layers, images
        self.batch_size, self.device = batch_size, device
        self.bn_images = list(bn_images)
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.calls = 0
        #: ``theta -> masks`` (the search round's space; per-group fractions until one is set)
        self.masks_of: Callable[[Any], dict[str, torch.Tensor]] = lambda theta: layer_masks(layers, theta)

    @torch.no_grad()
    def __call__(self, theta) -> float:
        from lqf.training import evaluate

        saved = [layer.module.weight.detach().clone() for layer in self.layers]
        saved_bn = [({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in self.norms]
        masks = self.masks_of(theta)
        try:
            for layer in self.layers:
                layer.module.weight.mul_(masks[layer.name])
            if self.bn_images and self.norms:
                self.recalibrate()
            self.calls += 1
            return evaluate(self.model, self.images, batch_size=self.batch_size, device=self.device)[
                "accuracy"
            ]
        finally:
            for layer, w in zip(self.layers, saved, strict=True):
                layer.module.weight.copy_(w)
            for m, (state, momentum) in zip(self.norms, saved_bn, strict=True):
                m.load_state_dict(state)
                m.momentum = momentum

    def recalibrate(self) -> None:
        """Running statistics = the average over ``bn_images`` batches (train-mode forward passes)."""
        for m in self.norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = self.model.training
        self.model.train()
        for x in self.bn_images:
            self.model(x.to(self.device))
        self.model.train(was_training)


def bn_batches(data, batch_size: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` fixed training batches (seeded) for BatchNorm re-estimation."""
    if count <= 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x, _ in data.train.batches(batch_size, shuffle=True, generator=gen):
        out.append(x)
        if len(out) == count:
            break
    return out


@dataclass
class SearchInputs:
    """What the search and its trials see, the same in every process of a shared search."""

    layers: list[PrunableLayer]
    search_data: Any  #: the data split with the held-out images (``select``) taken out of ``val``
    select: Any  #: the held-out validation images that judge the candidates, or ``None``
    subset: Any  #: the validation images every trial is evaluated on
    measure: MaskedAccuracy
    eval_batch: int


def search_inputs(model: nn.Module, data, config, options) -> SearchInputs:
    """The prunable layers of ``model``, the validation images of the search, and the trial measure
    (``config``: a :class:`~lqf.config.FitConfig`; ``options``: a
    :class:`~lqf.pruning.options.PruneOptions`)."""
    import dataclasses

    layers = find_prunable(
        model, include_head=options.prune_head, exclude=options.excluded, grouping=options.groups
    )
    if len(data.val) == 0:
        raise LqfError("the validation split is empty; pruning chooses rates on it: use --val-per-class >= 1")
    search_val, select = held_out(data.val, options.select_val)
    search_data = dataclasses.replace(data, val=search_val) if select is not None else data
    subset = validation_subset(search_data, options.val_subset)
    eval_batch = max(256, config.batch_size)
    recal = bn_batches(data, config.batch_size, options.bn_batches, config.seed + 7919)
    measure = MaskedAccuracy(model, layers, subset, eval_batch, config.device, recal)
    return SearchInputs(layers, search_data, select, subset, measure, eval_batch)
