"""The model object every method works on: a pretrained feature extractor
plus a replaceable classification head, taking images in [0, 1].

``TransferModel(x) = head(features(normalize(x)))`` with

* ``x``: float tensor ``(B, 3, S, S)`` with values in ``[0, 1]``;
* ``normalize``: the per-channel affine map the pretrained weights expect
  (``(x - mean) / std``; ``mean = std = 0.5`` maps to ``[-1, 1]``);
* ``features``: the backbone up to and including global pooling, ``(B, D)``;
* ``head``: a module mapping ``(B, D)`` to logits ``(B, C)`` (``nn.Linear`` by
  default; other heads can be swapped in with :meth:`TransferModel.set_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What the pretrained weights expect as input.

    Attributes:
        size: the resolution the weights were trained at (square side, pixels).
        mean: per-channel mean subtracted from ``[0, 1]`` images.
        std: per-channel standard deviation divided by.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)


IMAGENET = InputSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SYMMETRIC = InputSpec(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # maps [0, 1] to [-1, 1]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class TransferModel(nn.Module):
    """A pretrained backbone with a new head for a target task.

    Args:
        features: maps normalised images ``(B, 3, S, S)`` to features ``(B, D)``.
        num_features: ``D``.
        num_classes: ``C``, the target's number of classes.
        input_spec: the resolution and normalisation the backbone expects.
        name: the model spec it was built from (for run directories).
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int,
        input_spec: InputSpec,
        name: str = "model",
    ) -> None:
        super().__init__()
        self.normalize = Normalize(input_spec.mean, input_spec.std)
        self.features = features
        self.num_features = num_features
        self.num_classes = num_classes
        self.input_spec = input_spec
        self.name = name
        self.head: nn.Module
        self.reset_head(num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` of images ``x`` ``(B, 3, S, S)`` in ``[0, 1]``."""
        return self.features(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` of images ``x`` ``(B, 3, S, S)`` in ``[0, 1]``."""
        return self.head(self.embed(x))

    def set_head(self, head: nn.Module) -> None:
        """Replace the classification head (any module ``(B, D) -> (B, C)``)."""
        self.head = head

    def reset_head(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        """A fresh ``nn.Linear(D, num_classes)`` head, initialised from ``generator``.

        PyTorch's default ``nn.Linear`` initialisation (uniform in
        ``±1/sqrt(D)``), drawn from ``generator`` so the global RNG is untouched.
        """
        head = torch.nn.utils.skip_init(nn.Linear, self.num_features, num_classes)
        bound = 1.0 / self.num_features**0.5
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=generator)
            head.bias.uniform_(-bound, bound, generator=generator)
        self.head = head
        self.num_classes = num_classes

    def units(self) -> list[tuple[str, nn.Module]]:
        """The backbone's blocks in forward order, then the head.

        A unit is a sub-module that holds parameters and is not a plain
        container: containers (``nn.Sequential``, ``nn.ModuleList``,
        ``nn.ModuleDict``) are opened recursively. For timm's EfficientNet this
        gives ``conv_stem, bn1, blocks.0.0, ..., blocks.6.0, conv_head, bn2``;
        for a torchvision ResNet ``conv1, bn1, layer1.0, ..., layer4.1``. Used
        for partial unfreezing ("the last k units").
        """
        out: list[tuple[str, nn.Module]] = []

        def visit(prefix: str, module: nn.Module) -> None:
            for name, child in module.named_children():
                full = f"{prefix}.{name}" if prefix else name
                if not any(True for _ in child.parameters()):
                    continue
                if isinstance(child, _CONTAINERS):
                    visit(full, child)
                else:
                    out.append((full, child))

        visit("features", self.features)
        out.append(("head", self.head))
        return out
