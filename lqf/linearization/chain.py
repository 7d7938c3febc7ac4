"""Cut a :class:`~lqf.models.TransferModel` into a frozen prefix and a suffix.

LQF linearizes only part of the network (e.g. the last ``k`` units and the
head). Everything below the first linearized unit is a constant map of the
input, so its outputs can be computed once and cached. To run the model from
an intermediate point we need the forward pass as a chain of modules:

    model(x) = m_L(... m_2(m_1(x)))

:func:`module_chain` reads that chain from the module tree (containers are
opened, parameter-free modules such as pooling are kept in place), and
:func:`split_at` checks it against the real forward pass on a probe input:
models whose ``forward`` does more than chain their children (skip
connections between top-level children, functional ops) are detected and
reported, and the caller falls back to linearizing through the whole model.
"""

from __future__ import annotations

from torch import nn

from lqf.models.transfer import _CONTAINERS, TransferModel


class Chain(nn.Sequential):
    """An ``nn.Sequential`` over modules that belong to another model (shared, not copied)."""


def module_chain(model: TransferModel) -> list[tuple[str, nn.Module]]:
    """``[("normalize", ...), ("features.conv_stem", ...), ..., ("head", ...)]`` in forward order.

    Containers are opened recursively; every other child (with or without
    parameters) is one link. Correct only for models whose forward passes
    each child's output to the next: verify with :func:`chain_matches`.
    """
    out: list[tuple[str, nn.Module]] = [("normalize", model.normalize)]

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if not children:
            out.append((prefix, module))
            return
        for name, child in children:
            full = f"{prefix}.{name}"
            if isinstance(child, _CONTAINERS):
                visit(full, child)
            else:
                out.append((full, child))

    visit("features", model.features)
    out.append(("head", model.head))
    return out


def chain_matches(model: TransferModel, links: list[tuple[str, nn.Module]], probe) -> bool:
    """Whether running ``links`` one after the other reproduces ``model(probe)``.

    ``probe``: a small input batch ``(B, 3, S, S)``. Compared to a relative
    tolerance of 1e-5 (the two computations do the same operations in the
    same order, so they agree to rounding).
    """
    import torch

    with torch.no_grad():
        try:
            out = probe
            for _, module in links:
                out = module(out)
        except Exception:  # shapes do not chain: the model's forward is not a chain
            return False
        ref = model(probe)
    if out.shape != ref.shape:
        return False
    return bool(torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()) + 1e-8))


def split_at(model: TransferModel, first: str, probe) -> tuple[nn.Module, nn.Module] | None:
    """``(prefix, suffix)`` with ``model(x) == suffix(prefix(x))``, cut before link ``first``.

    ``first`` is the name of the chain link holding the first linearized
    parameter (see :func:`link_of`). Returns ``None`` if the model's forward
    is not the chain of its children (checked on ``probe``).
    """
    links = module_chain(model)
    names = [n for n, _ in links]
    if first not in names or not chain_matches(model, links, probe):
        return None
    i = names.index(first)
    return Chain(*[m for _, m in links[:i]]), Chain(*[m for _, m in links[i:]])


def link_of(model: TransferModel, parameter: str) -> str | None:
    """The chain link that owns ``parameter`` (a name in ``model.named_parameters()``)."""
    for name, _ in module_chain(model):
        if parameter == name or parameter.startswith(name + "."):
            return name
    return None
