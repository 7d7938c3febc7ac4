"""A compressed checkpoint whose size on disk reflects the pruning.

Format (one safetensors file, ``model.packed.safetensors``): every pruned
weight ``W`` (``n`` entries, ``m`` kept) is stored as two tensors,

* ``NAME::mask``   — the mask as a bit field, ``ceil(n / 8)`` bytes (``uint8``,
  most significant bit first, row-major order of ``W``);
* ``NAME::values`` — the ``m`` kept entries in row-major order (float32, or
  float16 with ``half=True``);

every other entry of the state dict (biases, BatchNorm, unpruned weights) is
stored as is (floating point ones in float16 with ``half=True``). The file's
metadata records the format, the shapes and dtypes needed to unpack.
A pruned float32 weight thus costs ``n / 8 + 4 m`` bytes instead of ``4 n``:
at 80 % sparsity 4.2x less. With ``half=False`` unpacking gives back the
state dict bit for bit, hence identical outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
import torch

from lqf.errors import LqfError
from lqf.io import atomic_write

FORMAT = "lqf-packed-1"
MASK, VALUES = "::mask", "::values"


def pack_state(
    state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *, half: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of the packed format.

    Args:
        state: a model's state dict.
        masks: ``{module_name: bool mask}``; ``module_name + ".weight"`` must be in ``state``.
        half: store floating point tensors in float16.
    """
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, dict] = {}
    packed_keys = {f"{name}.weight": mask for name, mask in masks.items() if not bool(mask.all())}
    for key, value in state.items():
        value = value.detach().cpu()
        store_dtype = torch.float16 if half and value.is_floating_point() else value.dtype
        shapes[key] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        if key in packed_keys:
            mask = packed_keys[key].detach().cpu().flatten().numpy().astype(bool)
            tensors[key + MASK] = torch.from_numpy(np.packbits(mask))
            tensors[key + VALUES] = value.flatten()[torch.from_numpy(mask)].to(store_dtype).contiguous()
            shapes[key]["packed"] = True
        else:
            tensors[key] = value.to(store_dtype).contiguous()
    return tensors, {"format": FORMAT, "shapes": json.dumps(shapes), "half": str(half)}


def unpack_state(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Dense state dict (original dtypes) from :func:`pack_state`'s output."""
    if metadata.get("format") != FORMAT:
        raise LqfError(f"not an lqf packed checkpoint (format {metadata.get('format')!r}, expected {FORMAT})")
    state = {}
    for key, info in json.loads(metadata["shapes"]).items():
        dtype = getattr(torch, info["dtype"])
        shape = tuple(info["shape"])
        if info.get("packed"):
            n = int(np.prod(shape)) if shape else 1
            bits = np.unpackbits(tensors[key + MASK].numpy(), count=n).astype(bool)
            dense = torch.zeros(n, dtype=dtype)
            dense[torch.from_numpy(bits)] = tensors[key + VALUES].to(dtype)
            state[key] = dense.view(shape)
        else:
            state[key] = tensors[key].to(dtype).view(shape)
    return state


def save_packed(
    path: str, state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *, half: bool = False
) -> int:
    """Write the packed checkpoint atomically; returns its size in bytes."""
    from safetensors.torch import save_file

    tensors, metadata = pack_state(state, masks, half=half)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return os.path.getsize(path)


def load_packed(path: str) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a packed checkpoint."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise LqfError(f"packed checkpoint {path!r} does not exist")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return unpack_state(tensors, metadata)


def dense_size(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors of ``state`` stored densely (what the file's payload weighs)."""
    return sum(v.numel() * v.element_size() for v in state.values())
