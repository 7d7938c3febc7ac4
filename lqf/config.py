"""Run configuration: dataclasses mirrored one-to-one by ``lqf fit`` flags.

A run is described by a :class:`FitConfig` (what every method shares: model,
data, split sizes, seed, batch size ...) and the options dataclass of its
method (``FinetuneOptions``, ``LinearProbeOptions`` ... registered in
:mod:`lqf.methods`). Every field carries its help text in
``field(metadata={"help": ...})``; the CLI turns each field into a flag of the
same name (``image_size`` -> ``--image-size``), so a config file, the flags and
the ``config.json`` saved in every run directory all use the same names.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

import tomllib

from lqf.errors import LqfError

#: ``--head`` values (lqf.heads builds them; kept here so the CLI needs no torch import)
HEADS = ("linear", "fixed-hadamard", "fixed-orthogonal")


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a help string (and optional ``choices``; ``advanced=True`` lists its
    flag in ``--help`` after the common ones, under "advanced")."""
    metadata: dict[str, Any] = {"help": help}
    if "choices" in kwargs:
        metadata["choices"] = kwargs.pop("choices")
    if kwargs.pop("advanced", False):
        metadata["advanced"] = True
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class FitConfig:
    """Settings shared by every method."""

    model: str = option(
        "efficientnet_lite0", "model spec: efficientnet_lite0/1/2, timm:NAME, torchvision:NAME, file:PATH"
    )
    data: str = option(
        "fashion-mnist",
        "data spec: fashion-mnist, animal-mnist, mnist5k, digits, imagefolder:PATH, torchvision:NAME",
    )
    method: str = option("finetune", "training method")
    head: str = option(
        "linear",
        "classifier head: linear (nn.Linear) or a fixed matrix with a learned scale and bias "
        "(fixed-hadamard, fixed-orthogonal)",
        choices=HEADS,
    )
    shots: int | None = option(None, "training images per class (few-shot); default: all")
    val_per_class: int = option(20, "validation images per class, carved from the training pool")
    max_test: int | None = option(None, "evaluate on a fixed stratified subset of this many test images")
    image_size: int = option(64, "side of the square input images in pixels")
    batch_size: int = option(64, "mini-batch size")
    epochs: int = option(10, "training epochs (for iterative methods)")
    seed: int = option(0, "seed for data selection, initialisation and data order")
    pretrained: bool = option(True, "load pretrained backbone weights")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")

    def __post_init__(self) -> None:
        checks = [
            (self.head not in HEADS, f"--head must be one of {', '.join(HEADS)}, got {self.head!r}"),
            (self.shots is not None and self.shots < 1, f"--shots must be >= 1, got {self.shots}"),
            (self.val_per_class < 0, f"--val-per-class must be >= 0, got {self.val_per_class}"),
            (not 8 <= self.image_size <= 1024, f"--image-size must be in 8..1024, got {self.image_size}"),
            (self.batch_size < 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.epochs < 1, f"--epochs must be >= 1, got {self.epochs}"),
            (
                self.max_test is not None and self.max_test < 1,
                f"--max-test must be >= 1, got {self.max_test}",
            ),
            (self.threads is not None and self.threads < 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for failed, message in checks:
            if failed:
                raise LqfError(message)
        if self.threads is not None:
            from lqf.resources import cpu_cores

            cores = cpu_cores()
            if self.threads > cores:
                raise LqfError(
                    f"--threads {self.threads} is more than this machine's {cores} CPU cores; "
                    f"give at most {cores}, or leave it out"
                )


def _check_type(name: str, annotation: Any, value: Any, source: str) -> Any:
    """``value`` if it fits the field's type (an int is a float too), else one clear line."""
    text = str(annotation)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise LqfError(f"{source}: {name} cannot be null; give a value or leave it out")
    if "bool" in text:
        ok = isinstance(value, bool)
        kind = "true or false"
    elif "float" in text:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        kind = "a number"
        value = float(value) if ok else value
    elif "int" in text:
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "a whole number"
    else:
        ok = isinstance(value, str)
        kind = "a string"
    if not ok:
        null = " (or null)" if optional else ""
        raise LqfError(f"{source}: {name} must be {kind}{null}, got {value!r}")
    return value


def from_dict(cls: type, values: dict[str, Any], *, source: str) -> Any:
    """Build ``cls`` from ``values``, rejecting unknown keys with one clear line."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise LqfError(
            f"unknown setting(s) {', '.join(unknown)} in {source}; valid: {', '.join(sorted(names))}"
        )
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{k: _check_type(k, types[k], v, source) for k, v in values.items()})


def read_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or TOML config file into a flat dict of settings.

    The file may be a run directory's ``config.json`` (with ``run`` and
    ``method_options`` sections) or a flat mapping of setting names.
    """
    if not os.path.isfile(path):
        raise LqfError(f"config file {path!r} does not exist")
    try:
        with open(path, "rb") as handle:
            if path.endswith(".toml"):
                raw = tomllib.load(handle)
            else:
                raw = json.load(handle)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise LqfError(f"config file {path!r} is not valid JSON/TOML: {err}") from None
    if not isinstance(raw, dict):
        raise LqfError(f"config file {path!r} must hold a mapping of settings")
    flat = dict(raw.get("run", {}))
    flat.update(raw.get("method_options", {}))
    flat.update({k: v for k, v in raw.items() if k not in ("run", "method_options", "lqf_version")})
    return {k.replace("-", "_"): v for k, v in flat.items()}
