"""``torchvision:NAME`` data sets, downloaded into ``<cache>/torchvision``.

Data sets whose images sit in one array (MNIST, KMNIST, CIFAR10, SVHN, ...)
become array pools; the others are wrapped so that only selected items are
decoded. Data sets with a ``train`` flag or a ``split`` argument keep their
official test split; the rest get the fixed 80/20 hold-out.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lqf.data.pools import ArrayPool, ItemPool, Pool, Source
from lqf.errors import LqfError

EXAMPLE_NAMES = (
    "MNIST",
    "FashionMNIST",
    "KMNIST",
    "CIFAR10",
    "CIFAR100",
    "SVHN",
    "STL10",
)
OFFLINE_SPECS = "fashion-mnist, animal-mnist, mnist5k, digits, imagefolder:PATH"
# ``split`` values of the training part where it is not called "train".
_TRAIN_SPLIT = {"OxfordIIITPet": "trainval"}
# Label attributes, tried in order, for data sets without an image array.
_LABEL_ATTRS = ("targets", "labels", "_labels", "y")


def _unknown(name: str, why: str) -> LqfError:
    return LqfError(
        f"torchvision data set {name!r} {why}; valid examples: "
        f"{', '.join(EXAMPLE_NAMES)}; use torchvision:NAME with a classification data "
        "set of torchvision.datasets"
    )


def resolve_dataset_class(name: str) -> tuple[str, type]:
    """Find ``torchvision.datasets.NAME`` (case-insensitive) and check it is usable.

    Returns
    -------
    name, cls : tuple[str, type]
        The canonical class name and the data set class.
    """
    import torchvision.datasets as tvd

    if not name:
        raise _unknown(name, "is empty")
    public = getattr(tvd, "__all__", dir(tvd))
    matches = [n for n in public if n.lower() == name.lower()]
    if not matches:
        raise _unknown(name, "does not exist")
    canonical = matches[0]
    cls = getattr(tvd, canonical)
    if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
        raise _unknown(name, "is not a data set")
    params = inspect.signature(cls.__init__).parameters
    required = [
        p.name
        for p in list(params.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if "download" not in params or required != ["root"]:
        raise _unknown(name, "cannot be downloaded by name alone")
    return canonical, cls


def _pool_from_dataset(dataset: Any, describe: str) -> Pool:
    """Wrap a torchvision data set as an array pool or a lazily decoded item pool."""
    data = getattr(dataset, "data", None)
    labels = next(
        (getattr(dataset, a) for a in _LABEL_ATTRS if getattr(dataset, a, None) is not None),
        None,
    )
    if isinstance(data, (np.ndarray, torch.Tensor)) and labels is not None:
        array = np.asarray(data)
        if array.dtype == np.uint8 and array.ndim in (3, 4) and len(array) == len(labels):
            if array.ndim == 3:
                array = array[:, None]
            elif array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
                array = array.transpose(0, 3, 1, 2)
            if array.shape[1] in (1, 3):
                return ArrayPool(np.ascontiguousarray(array), np.asarray(labels))
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return ItemPool(
        get_image=lambda i: dataset[i][0],
        labels=np.asarray(labels, dtype=np.int64),
        channels=3,
        describe=describe,
    )


@functools.lru_cache(maxsize=4)
def _load(name: str, root: str) -> Source:
    canonical, cls = resolve_dataset_class(name)
    params = inspect.signature(cls.__init__).parameters
    describe = f"torchvision data set {canonical}"
    try:
        if "train" in params:
            parts = [cls(root=root, train=flag, download=True) for flag in (True, False)]
        elif "split" in params:
            train_split = _TRAIN_SPLIT.get(canonical, "train")
            parts = [cls(root=root, split=s, download=True) for s in (train_split, "test")]
        else:
            parts = [cls(root=root, download=True)]
    except Exception as exc:  # no network, bad mirror, full disk, ...
        raise LqfError(
            f"could not download torchvision data set {canonical} (no network?); "
            f"offline data sets: {OFFLINE_SPECS}; cause: {type(exc).__name__}"
        ) from exc
    pools = [_pool_from_dataset(part, describe) for part in parts]
    num_classes = int(max(p.labels.max() for p in pools if len(p.labels))) + 1
    names = getattr(parts[0], "classes", None)
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        classes = [str(c) for c in names]
    else:
        classes = [str(k) for k in range(num_classes)]
    return Source(classes, pools[0], pools[1] if len(pools) > 1 else None)


def load_torchvision(name: str, cache: Path) -> Source:
    """Download (once) and wrap ``torchvision.datasets.NAME``.

    Parameters
    ----------
    name : str
        Data set class name, matched case-insensitively.
    cache : Path
        The lqf cache folder; data go to ``cache / "torchvision"``.
    """
    canonical, _ = resolve_dataset_class(name)
    return _load(canonical, str(cache / "torchvision"))
