"""The method interface and its registry.

A method turns a :class:`~lqf.models.TransferModel` and a
:class:`~lqf.data.DataSplits` into a trained model. Each method is a class
with a name, an options dataclass and a ``fit``; it registers itself with
:func:`register_method`, and the CLI builds its flags from the options
dataclass, so adding a method touches no central switch::

    @register_method
    class MyMethod(Method):
        name = "my-method"
        Options = MyOptions          # a dataclass whose fields use lqf.config.option

        def fit(self, model, data, ctx):
            ...                      # train ``model`` in place
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from lqf.errors import LqfError
from lqf.training.context import FitContext

if TYPE_CHECKING:
    from lqf.data import DataSplits
    from lqf.models import TransferModel


class Method(ABC):
    """Base class of training methods.

    Subclasses set ``name`` (the ``--method`` value), ``Options`` (a dataclass
    of method options) and ``summary`` (one line for ``--help``), and
    implement :meth:`fit`.
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    summary: ClassVar[str] = ""

    def __init__(self, options: Any | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def fit(self, model: TransferModel, data: DataSplits, ctx: FitContext) -> nn.Module | None:
        """Train ``model`` on ``data.train`` (``data.val`` for model selection).

        Returns ``None`` when ``model`` was trained in place, or the trained
        model when the method builds a new one around it (e.g. LQF's
        linearized model); that one must have a ``spec`` dict describing how
        to rebuild it (see :func:`lqf.runs.fit.load_run`).
        """

    @classmethod
    def rebuild(cls, model: TransferModel, spec: dict[str, Any], info: dict[str, Any]) -> nn.Module:
        """The trained model's structure around a freshly built ``model`` (weights loaded after).

        Only for methods whose :meth:`fit` returns a new model with a ``spec``.
        """
        raise LqfError(f"method {cls.name!r} cannot rebuild a saved model from {spec!r}")


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry (``--method NAME``).

    Option names must be unique across methods, because each becomes one flag.
    """
    from lqf.config import FitConfig

    taken = {f.name for f in dataclasses.fields(FitConfig)}
    for other in _REGISTRY.values():
        if other is not cls and other.name != cls.name:
            taken |= {f.name for f in dataclasses.fields(other.Options)}
    clash = taken & {f.name for f in dataclasses.fields(cls.Options)}
    if clash:
        raise ValueError(f"method {cls.name!r}: option names already used: {sorted(clash)}")
    _REGISTRY[cls.name] = cls
    return cls


_BUILTIN_ORDER = ("finetune", "linear-probe", "lqf")


def methods() -> dict[str, type[Method]]:
    """All registered methods by name: the built-in ones first, in a fixed order.

    The built-in ones register when :mod:`lqf.methods` is imported (its ``__init__``
    imports them), which happens before any of its modules is used.
    """
    names = [n for n in _BUILTIN_ORDER if n in _REGISTRY] + [n for n in _REGISTRY if n not in _BUILTIN_ORDER]
    return {n: _REGISTRY[n] for n in names}


def get_method(name: str) -> type[Method]:
    """The method class called ``name``, or a clear error listing the valid ones."""
    table = methods()
    if name not in table:
        raise LqfError(f"unknown method {name!r}; valid: {', '.join(table)}")
    return table[name]
