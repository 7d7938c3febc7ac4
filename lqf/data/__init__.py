"""Image classification data: built-in offline sets, image folders, torchvision.

:func:`load_data` turns a data spec into disjoint train / validation / test
:class:`ImageSet` objects (``uint8`` ``(N, C, S, S)`` images, ``int64`` labels)
with seeded, stratified few-shot selection and a seed-independent test set.
"""

from __future__ import annotations

from lqf.data.imageset import DataSplits, ImageSet
from lqf.data.registry import DATASETS, DataSpec, load_config_data, load_data, parse_data_spec

__all__ = [
    "DATASETS",
    "DataSpec",
    "DataSplits",
    "ImageSet",
    "load_config_data",
    "load_data",
    "parse_data_spec",
]
