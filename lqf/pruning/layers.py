"""Which layers are pruned, and how they are grouped for the search.

A *prunable layer* is an ``nn.Conv2d`` (depthwise and grouped convolutions
included) or an ``nn.Linear``; its weight is pruned, its bias is not. The
classification head (``head``) is prunable only on request.

Fine-Pruning searches one pruning fraction per *group* of layers. With
``grouping="layer"`` every layer is its own group. With ``grouping="stage"``
(the default) the layers of one stage of the backbone share a fraction: for
timm's EfficientNet ``features.blocks.5.2.conv_pw`` belongs to stage
``features.blocks.5``, for a torchvision ResNet ``features.layer3.1.conv2`` to
``features.layer3``; all depthwise convolutions form one group ``depthwise``
(they hold few parameters and are far more sensitive than the pointwise
convolutions around them). On ``efficientnet_lite0`` this turns 49 layers into
10 groups: ``conv_stem``, stages 0-6, ``conv_head`` and ``depthwise``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from lqf.errors import LqfError

GROUPINGS = ("stage", "layer")


@dataclass(frozen=True)
class PrunableLayer:
    """One pruned weight.

    Attributes:
        name: the module's name in the model (``features.blocks.5.1.conv_pw``).
        module: the ``nn.Conv2d`` / ``nn.Linear``; ``module.weight`` is pruned.
        group: the search group it belongs to.
        depthwise: a convolution with one input channel per group.
    """

    name: str
    module: nn.Module
    group: str
    depthwise: bool

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def stage_of(name: str) -> str:
    """The stage a layer belongs to, read from its dotted name.

    ``a.blocks.5.1.conv`` -> ``a.blocks.5`` (two indices in a row: stage, block);
    ``a.layer3.1.conv2`` -> ``a.layer3`` (one index inside a named stage);
    ``a.conv_stem`` and ``a.0`` (no index, or the index is the layer) -> the name.

    >>> stage_of("features.blocks.5.1.conv_pw"), stage_of("features.layer3.1.conv2"), stage_of("head")
    ('features.blocks.5', 'features.layer3', 'head')
    """
    parts = name.split(".")
    numeric = [i for i, p in enumerate(parts) if p.isdigit()]
    if not numeric:
        return name
    i = numeric[0]
    if i + 1 < len(parts) and parts[i + 1].isdigit():
        return ".".join(parts[: i + 1])
    if i == len(parts) - 1 or i == 0:
        return name
    return ".".join(parts[:i])


def find_prunable(
    model: nn.Module,
    *,
    include_head: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
    grouping: str = "stage",
) -> list[PrunableLayer]:
    """The prunable layers of ``model`` in forward (registration) order.

    Args:
        model: usually a :class:`~lqf.models.TransferModel`.
        include_head: also prune the classification head (the module ``head``).
        exclude: layer names (or name prefixes such as ``features.blocks.0``)
            that are not pruned; each must name at least one prunable layer.
        grouping: ``stage`` or ``layer`` (see the module docstring).

    Raises:
        LqfError: an unknown grouping, an excluded name that matches no layer,
            or no layer left to prune.
    """
    if grouping not in GROUPINGS:
        raise LqfError(f"unknown grouping {grouping!r}; valid: {', '.join(GROUPINGS)}")
    candidates = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and (include_head or not _in_head(name))
    ]
    names = [n for n, _ in candidates]
    for pattern in exclude:
        if not any(_matches(n, pattern) for n in names):
            close = difflib.get_close_matches(pattern, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise LqfError(
                f"--exclude names layer {pattern!r}, which is not a prunable layer of the model{hint}; "
                f"prunable layers: {_abbreviate(names)}"
            )
    layers = []
    for name, m in candidates:
        if any(_matches(name, p) for p in exclude):
            continue
        dw = is_depthwise(m)
        if grouping == "layer":
            group = name
        else:
            group = "depthwise" if dw else stage_of(name)
        layers.append(PrunableLayer(name=name, module=m, group=group, depthwise=dw))
    if not layers:
        raise LqfError("no prunable layer (Conv2d or Linear) is left; remove some --exclude names")
    return layers


def groups_of(layers: list[PrunableLayer]) -> list[str]:
    """Group names in order of first appearance."""
    return list(dict.fromkeys(layer.group for layer in layers))


def _in_head(name: str) -> bool:
    return name == "head" or name.startswith("head.")


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def _abbreviate(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
