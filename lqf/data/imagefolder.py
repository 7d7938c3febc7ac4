"""``imagefolder:PATH`` data sets: one sub-folder of images per class.

Two layouts are accepted::

    PATH/train/<class>/*.png  and  PATH/test/<class>/*.png   (official test split)
    PATH/<class>/*.png                                        (80/20 hold-out)

Scanning lists the files and reads only each image header (its PIL mode), so
undecodable files are reported up front; pixels are decoded, converted and
resized only for the images a run selects.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lqf.data.pools import FilePool, Source
from lqf.errors import LqfError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_EXTENSIONS_TEXT = " ".join(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not _is_hidden(entry.name))


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted."""
    found = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(files):
            if not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(current) / name)
    return found


def image_mode(path: Path) -> str:
    """PIL mode of the image at ``path``, read from its header only."""
    try:
        with Image.open(path) as image:
            return image.mode
    except Exception as exc:  # unidentified format, truncated header, permissions, ...
        raise LqfError(f"cannot read image '{path}' ({type(exc).__name__}); fix or remove the file") from exc


def _scan(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray, set[str]]:
    """List the images of each class present in ``folder``.

    Returns
    -------
    paths : list[Path]
    labels : np.ndarray
        ``int64``, shape ``(len(paths),)``.
    modes : set[str]
        PIL modes met.
    """
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        files = image_files(class_dir)
        if not files:
            raise LqfError(
                f"class folder '{class_dir}' has no images; accepted extensions: "
                f"{_EXTENSIONS_TEXT}; add images or remove the folder"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    modes = {image_mode(path) for path in paths}
    return paths, np.asarray(labels, dtype=np.int64), modes


def _require_classes(folder: Path, classes: list[str]) -> None:
    if not classes:
        raise LqfError(
            f"data folder '{folder}' has no class sub-folders; put the images of each "
            f"class in their own sub-folder, e.g. '{folder / 'cat' / '001.png'}'"
        )
    if len(classes) < 2:
        hint = (
            " (a 'train' folder is used as a split only next to a 'test' folder)"
            if classes[0] in ("train", "test")
            else ""
        )
        raise LqfError(
            f"data folder '{folder}' has only 1 class sub-folder, "
            f"{classes[0]!r}{hint}; "
            "classification needs at least 2 classes; add another class folder"
        )


def load_imagefolder(path: str) -> Source:
    """Scan an image folder data set.

    Parameters
    ----------
    path : str
        Folder with class sub-folders, or with ``train`` and ``test``
        sub-folders that each hold class sub-folders (the class list is their
        union; every class needs a training folder, test may lack some).

    Returns
    -------
    Source
        File pools; ``test`` is None for the single-folder layout. Images are
        stored with 1 channel when every file is grayscale (mode ``'L'``),
        else all are converted to RGB.
    """
    if not path:
        raise LqfError("imagefolder: needs a folder path after the colon; use e.g. imagefolder:/data/pets")
    root = Path(path).expanduser()
    if not root.exists():
        raise LqfError(
            f"data folder '{path}' does not exist; pass imagefolder:PATH with a folder "
            "holding one sub-folder of images per class"
        )
    if not root.is_dir():
        raise LqfError(
            f"data folder '{path}' is a file, not a folder; pass imagefolder:PATH "
            "with a folder holding one sub-folder of images per class"
        )
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        for split_dir in (train_dir, test_dir):
            if not class_folders(split_dir):
                _require_classes(split_dir, [])
        classes = sorted(set(class_folders(train_dir)) | set(class_folders(test_dir)))
        _require_classes(root, classes)
        for name in classes:
            if not (train_dir / name).is_dir():
                raise LqfError(
                    f"class '{name}' is in '{test_dir}' but not in '{train_dir}'; "
                    "add training images for it or remove it from the test folder"
                )
        train_paths, train_labels, train_modes = _scan(train_dir, classes)
        test_paths, test_labels, test_modes = _scan(test_dir, classes)
        channels = 1 if train_modes | test_modes <= {"L"} else 3
        return Source(
            classes,
            FilePool(train_paths, train_labels, channels),
            FilePool(test_paths, test_labels, channels),
        )
    classes = class_folders(root)
    _require_classes(root, classes)
    paths, labels, modes = _scan(root, classes)
    channels = 1 if modes <= {"L"} else 3
    return Source(classes, FilePool(paths, labels, channels), None)
