"""Raw image pools: labels up front, pixels fetched (and resized) on demand.

A pool knows the label of every image without decoding it, and turns a
selection of positions into a ``uint8`` tensor ``(n, C, S, S)``. Only the
selected images are resized or decoded, so drawing a few shots from a large
source is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lqf.errors import LqfError

# Images resized per interpolate call; bounds the float32 scratch memory.
_RESIZE_CHUNK = 1024


class Pool(Protocol):
    """A labelled source of images that can be fetched at any square size."""

    labels: np.ndarray  # int64, shape (N,)

    def fetch(self, index: np.ndarray, size: int) -> torch.Tensor:
        """Return the images at ``index`` as ``uint8`` ``(n, C, size, size)``."""
        ...


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``uint8`` images ``(n, C, H, W)`` to ``(n, C, size, size)``.

    Bilinear with antialiasing, computed in float32 and rounded back to
    ``uint8``; returned unchanged when already ``size x size``.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(
        images.to(torch.float32),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class ArrayPool:
    """Images held in one ``uint8`` array.

    Attributes
    ----------
    images : np.ndarray
        ``uint8``, shape ``(N, C, H, W)``; treated as read-only.
    labels : np.ndarray
        ``int64``, shape ``(N,)``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"pool images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.images.shape[1] not in (1, 3):
            raise ValueError(f"pool images need 1 or 3 channels, got {self.images.shape[1]}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise ValueError("pool labels must have shape (N,)")
        self.images.setflags(write=False)
        self.labels.setflags(write=False)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def fetch(self, index: np.ndarray, size: int) -> torch.Tensor:
        """Return the images at ``index``, resized: ``uint8`` ``(n, C, size, size)``."""
        index = np.asarray(index, dtype=np.int64)
        out = torch.empty((len(index), self.channels, size, size), dtype=torch.uint8)
        for start in range(0, len(index), _RESIZE_CHUNK):
            part = index[start : start + _RESIZE_CHUNK]
            # Fancy indexing copies, so the cached array is never shared.
            raw = torch.from_numpy(np.ascontiguousarray(self.images[part]))
            out[start : start + len(part)] = resize_uint8(raw, size)
        return out


def pil_to_uint8(image: Image.Image, channels: int, size: int) -> np.ndarray:
    """Convert a PIL image to ``uint8`` ``(channels, size, size)``.

    Grayscale (``channels == 1``) uses mode ``'L'``; everything else is
    converted to RGB (palette transparency goes through RGBA first, alpha is
    dropped). Resized with PIL bilinear filtering, which antialiases.
    """
    if channels == 1:
        image = image.convert("L")
    elif image.mode != "RGB":
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        return array[None].copy()
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass
class FilePool:
    """Images stored as files, decoded with PIL only when fetched.

    Attributes
    ----------
    paths : list[Path]
        One file per image.
    labels : np.ndarray
        ``int64``, shape ``(N,)``.
    channels : int
        1 when every image is grayscale, else 3.
    """

    paths: list[Path]
    labels: np.ndarray
    channels: int

    def fetch(self, index: np.ndarray, size: int) -> torch.Tensor:
        """Decode, convert and resize the files at ``index``.

        Returns ``uint8`` ``(n, C, size, size)``.
        """
        out = torch.empty((len(index), self.channels, size, size), dtype=torch.uint8)
        for row, i in enumerate(np.asarray(index, dtype=np.int64)):
            path = self.paths[i]
            try:
                with Image.open(path) as image:
                    array = pil_to_uint8(image, self.channels, size)
            except Exception as exc:  # any decoder failure is the file's fault
                raise LqfError(
                    f"cannot read image '{path}' ({type(exc).__name__}: {exc}); fix or remove the file"
                ) from exc
            out[row] = torch.from_numpy(array)
        return out


@dataclass
class ItemPool:
    """Images produced one at a time by a callable (e.g. a dataset's ``__getitem__``).

    Attributes
    ----------
    get_image : Callable[[int], PIL.Image.Image]
        Returns the image at a position.
    labels : np.ndarray
        ``int64``, shape ``(N,)``.
    channels : int
        Stored channel count (1 or 3).
    describe : str
        Names the source in error messages.
    """

    get_image: Callable[[int], Image.Image]
    labels: np.ndarray
    channels: int
    describe: str

    def fetch(self, index: Sequence[int] | np.ndarray, size: int) -> torch.Tensor:
        """Produce, convert and resize the images at ``index``."""
        out = torch.empty((len(index), self.channels, size, size), dtype=torch.uint8)
        for row, i in enumerate(np.asarray(index, dtype=np.int64)):
            image = self.get_image(int(i))
            if not isinstance(image, Image.Image):
                raise LqfError(
                    f"{self.describe} returned {type(image).__name__} instead of a PIL "
                    "image; use a data set whose items are PIL images"
                )
            out[row] = torch.from_numpy(pil_to_uint8(image, self.channels, size))
        return out


@dataclass
class Source:
    """The raw contents of one data set.

    Attributes
    ----------
    classes : list[str]
        Class names, index = label.
    train : Pool
        The training pool (the whole data set when ``test`` is None).
    test : Pool or None
        The official test split; None means a fixed stratified hold-out of
        ``train`` serves as test set.
    """

    classes: list[str]
    train: Pool
    test: Pool | None
