"""The ``--device`` setting: checked once, up front, so a bad value is one line and not a traceback."""

from __future__ import annotations

import torch

from lqf.errors import LqfError


def check_device(name: str) -> torch.device:
    """``torch.device(name)``, refused with one clear line if this machine cannot run it.

    Raises:
        LqfError: ``name`` is no torch device (``"gpu"``), or names a CUDA or MPS device
            that is not there (no driver, or ``cuda:N`` beyond the devices visible).
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LqfError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LqfError(f"--device {name}: no CUDA device is available on this machine; use --device cpu")
        if device.index is not None and device.index >= count:
            raise LqfError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise LqfError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def usable(name: str) -> bool:
    """Whether :func:`check_device` accepts ``name`` here."""
    try:
        check_device(name)
    except LqfError:
        return False
    return True
