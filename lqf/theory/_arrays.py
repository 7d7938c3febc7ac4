"""NumPy/PyTorch interchange for the theory functions.

The linear-regression functions accept feature matrices as NumPy arrays or
PyTorch tensors (for example tangent features of a network), compute in float64
NumPy, and hand results back in the type of the input features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lqf.errors import LqfError


def is_torch(value: Any) -> bool:
    """True for a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def as_f64(value: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """``value`` (array, tensor, list or number) as a float64 NumPy array.

    Raises:
        LqfError: when it does not have ``ndim`` dimensions or holds NaN/inf.
    """
    if is_torch(value):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise LqfError(f"{name} must have {ndim} dimension(s), got shape {tuple(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise LqfError(f"{name} holds NaN or infinite values; pass finite numbers")
    return array


def like(result: np.ndarray, reference: Any) -> Any:
    """``result`` as a float64 torch tensor on ``reference``'s device if ``reference`` is one."""
    if is_torch(reference):
        import torch

        return torch.as_tensor(result, dtype=torch.float64, device=reference.device)
    return result


def check_problem(X: Any, y: Any, theta: Any | None = None) -> tuple[np.ndarray, ...]:
    """Validate a regression problem: ``X`` (n, d), ``y`` (n,), optional ``theta`` (d,)."""
    Xa = as_f64(X, "X", 2)
    ya = as_f64(y, "y", 1)
    if ya.shape[0] != Xa.shape[0]:
        raise LqfError(f"X has {Xa.shape[0]} rows but y has {ya.shape[0]} entries; they must match")
    if Xa.shape[0] == 0:
        raise LqfError("X has no rows; pass at least one sample")
    if theta is None:
        return Xa, ya
    ta = as_f64(theta, "theta", 1)
    if ta.shape[0] != Xa.shape[1]:
        raise LqfError(f"theta has {ta.shape[0]} entries but X has {Xa.shape[1]} columns; they must match")
    return Xa, ya, ta
