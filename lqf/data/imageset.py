"""In-memory image sets and the train/val/test bundle returned by ``load_data``.

Images are stored as ``uint8`` tensors of shape ``(N, C, S, S)`` with ``C`` 1
(grayscale) or 3 (RGB); :meth:`ImageSet.batches` turns them into the float
``(B, 3, S, S)`` tensors in ``[0, 1]`` that models consume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lqf.errors import LqfError


@dataclass
class ImageSet:
    """A labelled set of equally sized images.

    Attributes
    ----------
    images : torch.Tensor
        ``uint8``, shape ``(N, C, S, S)``, ``C`` in {1, 3}.
    labels : torch.Tensor
        ``int64``, shape ``(N,)``; values index ``classes``.
    classes : list[str]
        Class names; ``classes[k]`` names label ``k``.
    index : torch.Tensor or None
        ``int64``, shape ``(N,)``: position of each image in the raw source
        array it was drawn from (the raw test array for sources with an
        official test split, the single raw array otherwise). Lets callers
        check that splits are disjoint and trace images back to the source.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    index: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, S, S), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {self.images.shape[1]}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must be int64 of shape ({len(self.images)},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.index is not None and self.index.shape != self.labels.shape:
            raise ValueError("index must have the same shape as labels")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Side length ``S`` of the stored square images."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """Stored channel count ``C`` (1 or 3); batches always have 3."""
        return int(self.images.shape[1])

    def num_batches(self, batch_size: int) -> int:
        """Number of batches :meth:`batches` yields, the last partial one included."""
        _check_batch_size(batch_size)
        return math.ceil(len(self) / batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over ``(x, y)`` batches.

        Parameters
        ----------
        batch_size : int
            Images per batch (>= 1); the last batch may be smaller.
        shuffle : bool
            Visit images in a random order drawn from ``generator`` only; the
            global torch RNG is never touched. Without a generator a fresh one
            seeded with 0 is used, so the order is still reproducible.
        generator : torch.Generator, optional
            Source of randomness for ``shuffle``.

        Yields
        ------
        x : torch.Tensor
            ``float32``, shape ``(B, 3, S, S)``, values in ``[0, 1]``;
            grayscale images are repeated over the 3 channels.
        y : torch.Tensor
            ``int64``, shape ``(B,)``.
        """
        _check_batch_size(batch_size)
        n = len(self)
        order: torch.Tensor | None = None
        if shuffle:
            if generator is None:
                generator = torch.Generator().manual_seed(0)
            order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if order is None:
                x = self.images[start : start + batch_size]
                y = self.labels[start : start + batch_size]
            else:
                chosen = order[start : start + batch_size]
                x = self.images[chosen]
                y = self.labels[chosen]
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            yield x.to(torch.float32).contiguous().div_(255.0), y.clone()

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageSet:
        """Return a new set holding the images at ``index`` (positions or a mask).

        Parameters
        ----------
        index : torch.Tensor or np.ndarray
            Integer positions, shape ``(M,)``, or a boolean mask, shape ``(N,)``.
        """
        idx = torch.as_tensor(index)
        if idx.dtype != torch.bool:
            idx = idx.to(torch.int64)
        return ImageSet(
            images=self.images[idx].clone(),
            labels=self.labels[idx].clone(),
            classes=list(self.classes),
            index=None if self.index is None else self.index[idx].clone(),
        )


@dataclass
class DataSplits:
    """Train, validation and test sets of one data set, sharing one class list.

    Attributes
    ----------
    name : str
        The data spec as given, e.g. ``"fashion-mnist"``.
    train, val, test : ImageSet
        Disjoint sets; ``val`` has 0 images when ``val_per_class`` is 0.
    classes : list[str]
        Class names, index = label.
    """

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]

    def summary(self) -> dict:
        """Sizes of the splits, as a JSON-ready dict."""
        return {
            "data": self.name,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "num_classes": len(self.classes),
            "image_size": self.train.image_size,
        }


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LqfError(
            f"batch size {batch_size!r} is invalid; it must be a whole number >= 1; "
            "pass a positive --batch-size"
        )
