"""Data specs (``fashion-mnist``, ``imagefolder:PATH``, ...) and :func:`load_data`."""

from __future__ import annotations

import difflib
from typing import NamedTuple

import numpy as np
import torch

from lqf.data.imagefolder import load_imagefolder
from lqf.data.imageset import DataSplits, ImageSet
from lqf.data.pools import Pool, Source
from lqf.data.sources import BUILTIN_LOADERS, cache_dir
from lqf.data.splits import draw_val_and_train, holdout_split, stratified_subsample
from lqf.data.torchvision_source import load_torchvision
from lqf.errors import LqfError

DATASETS: tuple[str, ...] = ("fashion-mnist", "animal-mnist", "mnist5k", "digits")
_PREFIXES = ("imagefolder", "torchvision")
VALID_SPECS = ", ".join([*DATASETS, "imagefolder:PATH", "torchvision:NAME"])
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024


class DataSpec(NamedTuple):
    """A parsed data spec.

    Attributes
    ----------
    kind : str
        A name from ``DATASETS``, ``"imagefolder"`` or ``"torchvision"``.
    arg : str or None
        The folder path or torchvision class name; None for built-ins.
    """

    kind: str
    arg: str | None


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a data spec, raising :class:`LqfError` if it names nothing valid.

    Built-in names are matched case-insensitively (``_`` works as ``-``).
    The argument of ``imagefolder:`` / ``torchvision:`` must not be empty;
    whether the folder or class exists is checked when loading.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise LqfError(f"data set {spec!r} is empty; valid: {VALID_SPECS}")
    text = spec.strip()
    prefix, colon, arg = text.partition(":")
    if colon and prefix.lower() in _PREFIXES:
        kind = prefix.lower()
        if not arg.strip():
            example = "imagefolder:/data/pets" if kind == "imagefolder" else "torchvision:CIFAR10"
            raise LqfError(
                f"data set {spec!r} has an empty {kind} argument; give it after the colon, e.g. {example}"
            )
        return DataSpec(kind, arg.strip() if kind == "torchvision" else arg)
    name = text.lower().replace("_", "-")
    if name in DATASETS:
        return DataSpec(name, None)
    close = difflib.get_close_matches(name, [*DATASETS, *_PREFIXES], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise LqfError(f"unknown data set {spec!r}{hint}; valid: {VALID_SPECS}")


def load_source(spec: str) -> Source:
    """Raw pools of the data set named by ``spec`` (built-ins are cached)."""
    parsed = parse_data_spec(spec)
    if parsed.kind == "imagefolder":
        return load_imagefolder(parsed.arg or "")
    if parsed.kind == "torchvision":
        return load_torchvision(parsed.arg or "", cache_dir())
    return BUILTIN_LOADERS[parsed.kind]()


def _check_int(value: object, option: str, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise LqfError."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    allowed = f"a whole number >= {low}" if high is None else f"a whole number {low}..{high}"
    raise LqfError(f"{option} {value!r} is invalid; it must be {allowed}; change {option}")


def _image_set(pool: Pool, index: np.ndarray, size: int, classes: list[str]) -> ImageSet:
    return ImageSet(
        images=pool.fetch(index, size),
        labels=torch.from_numpy(pool.labels[index].astype(np.int64)),
        classes=list(classes),
        index=torch.from_numpy(np.asarray(index, dtype=np.int64).copy()),
    )


def load_data(
    spec: str,
    *,
    image_size: int = 64,
    shots: int | None = None,
    val_per_class: int = 20,
    seed: int = 0,
    max_test: int | None = None,
    extra_val: int = 0,
) -> DataSplits:
    """Load a data set as disjoint train / validation / test image sets.

    The test set is the source's official test split, or a fixed stratified
    80/20 hold-out (seed 0) when it has none; it never depends on ``seed``.
    Validation (``val_per_class`` per class) and then ``shots`` per class
    (or the whole rest) are drawn from the training pool with ``seed``.

    Parameters
    ----------
    spec : str
        ``fashion-mnist``, ``animal-mnist``, ``mnist5k``, ``digits``,
        ``imagefolder:PATH`` or ``torchvision:NAME``.
    image_size : int
        Side ``S`` (8..1024) every stored image is resized to.
    shots : int, optional
        Training images per class; None keeps all.
    val_per_class : int
        Validation images per class (>= 0).
    seed : int
        Seed of the validation and training draws (>= 0).
    max_test : int, optional
        Keep only a fixed stratified subset of this many test images.
    extra_val : int
        More validation images per class, drawn after the training ones
        (needs ``shots``; the train set is the same as without them).

    Returns
    -------
    DataSplits
        Images ``uint8`` ``(N, C, S, S)`` with ``C`` 1 or 3, labels ``int64``.
    """
    parse_data_spec(spec)
    size = _check_int(image_size, "--image-size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    val_per_class = _check_int(val_per_class, "--val-per-class", 0)
    seed = _check_int(seed, "--seed", 0)
    if shots is not None:
        shots = _check_int(shots, "--shots", 1)
    if max_test is not None:
        max_test = _check_int(max_test, "--max-test", 1)

    source = load_source(spec)
    classes = list(source.classes)
    if source.test is None:
        pool_index, test_index = holdout_split(source.train.labels)
        test_pool = source.train
    else:
        pool_index = np.arange(len(source.train.labels), dtype=np.int64)
        test_index = np.arange(len(source.test.labels), dtype=np.int64)
        test_pool = source.test
    if max_test is not None:
        test_index = stratified_subsample(test_pool.labels, test_index, max_test)
    val_index, train_index = draw_val_and_train(
        source.train.labels,
        pool_index,
        classes,
        val_per_class=val_per_class,
        shots=shots,
        seed=seed,
        extra_val=_check_int(extra_val, "--extra-val", 0),
    )
    return DataSplits(
        name=spec,
        train=_image_set(source.train, train_index, size, classes),
        val=_image_set(source.train, val_index, size, classes),
        test=_image_set(test_pool, test_index, size, classes),
        classes=classes,
    )


def load_config_data(config) -> DataSplits:
    """:func:`load_data` with the split settings of a run's ``config`` (a ``FitConfig``)."""
    return load_data(
        config.data,
        image_size=config.image_size,
        shots=config.shots,
        val_per_class=config.val_per_class,
        seed=config.seed,
        max_test=config.max_test,
    )
