"""The linearized modules of a network, and the per-layer pieces of their Jacobian rows.

A :class:`Site` is one module with linearized parameters. For a convolution or ``Linear``
(``struct``) the rows of ``J`` are ``sum_s g_{c,s} a_s^T`` over its output positions ``s``:
:func:`patches` gives ``a`` (the inputs each output position sees, per group) and
:func:`positions` arranges the output cotangents ``g``. For an eval-mode affine
normalisation (``affine``: BatchNorm, LayerNorm, GroupNorm) they are ``sum_s g_s xhat_s`` and
``sum_s g_s``, with :func:`xhat` the normalised input. Any other module (``dense``) falls back
to per-sample ``jacrev``. :mod:`lqf.linearization.factors` assembles them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lqf.linearization.linear_model import LinearizedModel

STRUCT, AFFINE, DENSE = "struct", "affine", "dense"


def _conv_same(module: nn.Module) -> bool:
    """timm's ``Conv2dSame`` (TensorFlow "same" padding computed in its forward)."""
    return type(module).__name__ == "Conv2dSame" and isinstance(module, nn.Conv2d)


def _is_conv(module: nn.Module) -> bool:
    if _conv_same(module):
        return True
    return (
        type(module).forward is nn.Conv2d.forward
        and isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
    )


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _is_affine(module: nn.Module) -> bool:
    """An eval-mode elementwise affine normalisation whose ``xhat`` we can recompute."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.affine and module.running_mean is not None and module.running_var is not None
    if isinstance(module, nn.LayerNorm):
        return module.elementwise_affine and type(module).forward is nn.LayerNorm.forward
    if isinstance(module, nn.GroupNorm):
        return module.affine and type(module).forward is nn.GroupNorm.forward
    return False


def norm_act(module: nn.Module) -> bool:
    """timm's ``BatchNormAct2d``: the activation runs inside the module, after ``drop``."""
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and isinstance(getattr(module, "drop", None), nn.Module)
        and isinstance(getattr(module, "act", None), nn.Module)
    )


@dataclass
class Site:
    """One linearized module: how its rows of ``J`` are represented.

    Attributes:
        name: the module's name in the linearized network.
        module: the module.
        kind: ``struct`` (a convolution or ``Linear``), ``affine`` (a normalisation) or ``dense``
            (any other module).
        weight, bias: indices of its weight and bias in ``LinearizedModel.delta`` (or ``None``).
        groups: convolution groups (1 for ``Linear``).
        fallback: rows from per-sample ``jacrev`` (a module the factor rules do not cover, or one
            that never ran as a module).
    """

    name: str
    module: nn.Module
    kind: str
    weight: int | None
    bias: int | None
    groups: int = 1
    fallback: bool = False
    #: every linearized tensor of the module, in ``delta`` order (the columns of its dense rows)
    tensors: list[int] = field(default_factory=list)


def find_sites(lin: LinearizedModel) -> list[Site]:
    """The linearized modules of ``lin`` in the order of ``lin.names`` (first tensor)."""
    owners: dict[str, dict[str, int]] = {}
    for i, name in enumerate(lin.names):
        path, _, attr = name.rpartition(".")
        owners.setdefault(path, {})[attr] = i
    sites = []
    for path, attrs in owners.items():
        module = lin.module.get_submodule(path) if path else lin.module
        known = set(attrs) <= {"weight", "bias"}
        w, b = attrs.get("weight"), attrs.get("bias")
        tensors = sorted(attrs.values())
        if known and (_is_conv(module) or _is_linear(module)):
            groups = module.groups if isinstance(module, nn.Conv2d) else 1
            sites.append(Site(path, module, STRUCT, w, b, groups=groups, tensors=tensors))
        elif known and _is_affine(module):
            sites.append(Site(path, module, AFFINE, w, b, tensors=tensors))
        else:
            sites.append(Site(path, module, DENSE, None, None, fallback=True, tensors=tensors))
    return sites


def patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inputs of a conv/linear at each output position: ``(B, S, groups, I/groups * kh * kw)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, 1, x.shape[-1])
    kh, kw = module.kernel_size
    if _conv_same(module):
        from timm.layers.padding import pad_same

        x = pad_same(x, module.weight.shape[-2:], module.stride, module.dilation)
        padding = (0, 0)
    elif isinstance(module.padding, str):
        if module.padding == "valid":
            padding = (0, 0)
        else:  # "same" (stride 1): the extra pixel of an even kernel goes right/bottom, as torch does
            pads = []
            for d, k in zip(reversed(module.dilation), reversed(module.kernel_size), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
            padding = (0, 0)
    else:
        padding = module.padding
    cols = F.unfold(x, (kh, kw), dilation=module.dilation, padding=padding, stride=module.stride)
    b, _, positions = cols.shape
    return cols.reshape(b, module.groups, -1, positions).permute(0, 3, 1, 2)


def xhat(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised input of an affine norm, as ``(B, S, O)`` with ``O`` the affine size."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = module.running_mean.reshape(shape)
        var = module.running_var.reshape(shape)
        xh = (x - mean) / torch.sqrt(var + module.eps)
        return xh.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)
    if isinstance(module, nn.LayerNorm):
        xh = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        o = math.prod(module.normalized_shape)
        return xh.reshape(x.shape[0], -1, o)
    xh = F.group_norm(x, module.num_groups, None, None, module.eps)  # GroupNorm: channels in dim 1
    return xh.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)


def positions(site: Site, g: torch.Tensor) -> torch.Tensor:
    """Cotangents ``(C, B, *out)`` of one call as ``(B, C, S, groups, O/groups)`` (struct) or
    ``(B, C, S, O)`` (affine)."""
    m = site.module
    c, b = g.shape[:2]
    if site.kind == STRUCT and isinstance(m, nn.Linear):
        return g.reshape(c, b, -1, 1, g.shape[-1]).permute(1, 0, 2, 3, 4)
    if site.kind == STRUCT:  # conv output (C, B, O, H, W)
        out = g.reshape(c, b, site.groups, -1, g.shape[-2] * g.shape[-1])
        return out.permute(1, 0, 4, 2, 3)
    if isinstance(m, nn.LayerNorm):
        o = math.prod(m.normalized_shape)
        return g.reshape(c, b, -1, o).permute(1, 0, 2, 3)
    return g.reshape(c, b, g.shape[2], -1).permute(1, 0, 3, 2)


def kernel_cost(site: Site, positions: int, classes: int) -> tuple[float, float]:
    """Work per pair of rows of ``J M^-1 J^T`` with factors and with dense rows, for a struct site."""
    w = site.module.weight
    per_group_out = w.shape[0] // site.groups
    struct = positions * positions * (per_group_out + 1) * site.groups
    return float(struct), float(w.numel() + (w.shape[0] if site.bias is not None else 0))
