"""Heads by their ``--head`` name, and the record that rebuilds them from a run directory."""

from __future__ import annotations

from typing import Any

from torch import nn

from lqf.config import HEADS
from lqf.errors import LqfError
from lqf.heads.fixed import FixedClassifier
from lqf.heads.hadamard import next_pow2

#: ``--head`` values; ``linear`` is the model's own ``nn.Linear`` head
HEAD_CHOICES = HEADS


def make_head(name: str, in_features: int, num_classes: int, *, seed: int = 0) -> FixedClassifier:
    """A fixed head ``(B, d) -> (B, C)`` for ``--head fixed-hadamard`` or ``fixed-orthogonal``.

    Raises:
        LqfError: an unknown name, or a Hadamard head with ``C > p2(d)``, whose
            truncated matrix repeats rows (classes ``i`` and ``i + p2(d)``
            would be told apart by their bias alone).
    """
    if name not in HEAD_CHOICES or name == "linear":
        raise LqfError(f"unknown fixed head {name!r}; valid: {', '.join(HEAD_CHOICES[1:])}")
    kind = name.removeprefix("fixed-")
    if kind == "hadamard" and num_classes > next_pow2(in_features):
        raise LqfError(
            f"--head fixed-hadamard: {num_classes} classes exceed {next_pow2(in_features)} (the next power "
            f"of two >= the {in_features} features), so the truncated Hadamard matrix repeats rows; "
            "use --head fixed-orthogonal or linear"
        )
    return FixedClassifier(in_features, num_classes, kind, seed=seed)


def set_head(model: Any, name: str, *, seed: int = 0) -> None:
    """Give a :class:`~lqf.models.TransferModel` the head ``name`` (``linear`` keeps its own)."""
    if name not in HEAD_CHOICES:
        raise LqfError(f"unknown head {name!r}; valid: {', '.join(HEAD_CHOICES)}")
    if name != "linear":
        model.set_head(make_head(name, model.num_features, model.num_classes, seed=seed))


def head_spec(head: nn.Module) -> dict[str, Any]:
    """``{"name": --head value, ...}``: what :func:`head_from_spec` needs (``model.json``)."""
    if isinstance(head, FixedClassifier):
        return {"name": f"fixed-{head.kind}", **head.spec()}
    return {"name": "linear"}


def head_from_spec(spec: dict[str, Any]) -> nn.Module | None:
    """The head recorded by :func:`head_spec` (``None`` for ``linear``: the model's own)."""
    name = spec.get("name", "linear")
    if name == "linear":
        return None
    if name not in HEAD_CHOICES:
        raise LqfError(f"model.json names an unknown head {name!r}; valid: {', '.join(HEAD_CHOICES)}")
    return FixedClassifier(
        spec["in_features"],
        spec["out_features"],
        name.removeprefix("fixed-"),
        seed=spec.get("seed", 0),
        row_offset=spec.get("row_offset", 1),
    )
