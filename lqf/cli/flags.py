"""Turn config dataclasses into argparse flags, one flag per field.

``image_size: int`` becomes ``--image-size INT``; ``pretrained: bool`` becomes
``--pretrained/--no-pretrained``; a field with ``choices`` metadata gets them.
Defaults are suppressed in the parser so that a value given on the command
line can be told apart from one that was not (flags override a config file,
which overrides the dataclass defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from lqf.errors import LqfError


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _converter(type_text: str, name: str):
    text = str(type_text)
    base = "float" if "float" in text else "int" if "int" in text else "str"
    optional = "None" in text

    def convert(value: str) -> Any:
        if optional and value.lower() in ("none", "auto"):
            return None
        try:
            return {"float": float, "int": int, "str": str}[base](value)
        except ValueError:
            kind = {"float": "a number", "int": "an integer", "str": "a string"}[base]
            raise argparse.ArgumentTypeError(f"{flag_name(name)} expects {kind}, got {value!r}") from None

    convert.__name__ = base
    return convert


def add_dataclass_flags(
    parser: argparse._ActionsContainer,
    cls: type,
    skip: tuple[str, ...] = (),
    advanced: argparse._ActionsContainer | None = None,
) -> list[str]:
    """Add one flag per field of ``cls`` (except those in ``skip``); returns the field names.

    ``advanced``: where the fields marked ``advanced`` go (default: with the others)."""
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        target = advanced if advanced is not None and f.metadata.get("advanced") else parser
        help_text = f.metadata.get("help", "")
        default = f.default
        shown = f" (default: {default})" if default is not None else ""
        if "bool" in str(f.type):
            target.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text + shown,
            )
        else:
            target.add_argument(
                flag_name(f.name),
                dest=f.name,
                type=_converter(f.type, f.name),
                choices=f.metadata.get("choices"),
                default=argparse.SUPPRESS,
                metavar=f.name.upper() if not f.metadata.get("choices") else None,
                help=help_text + shown,
            )
        names.append(f.name)
    return names


def given(namespace: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The subset of ``names`` that the user gave on the command line."""
    return {n: getattr(namespace, n) for n in names if hasattr(namespace, n)}


def split_settings(settings: dict[str, Any], config_cls: type, method_cls: type) -> tuple[dict, dict]:
    """Split flat settings into (run settings, method options), rejecting
    options that belong to another method."""
    from lqf.methods import methods

    run_names = {f.name for f in dataclasses.fields(config_cls)}
    own = {f.name for f in dataclasses.fields(method_cls.Options)}
    run, opts = {}, {}
    for key, value in settings.items():
        if key in run_names:
            run[key] = value
        elif key in own:
            opts[key] = value
        else:
            owners = [
                m.name for m in methods().values() if key in {f.name for f in dataclasses.fields(m.Options)}
            ]
            where = f"an option of {', '.join(owners)}" if owners else "not a known setting"
            raise LqfError(f"{flag_name(key)} is {where}, not of --method {method_cls.name}")
    return run, opts
