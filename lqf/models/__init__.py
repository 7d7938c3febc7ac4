"""Pretrained models with a replaceable head: the model zoo."""

from lqf.models.transfer import InputSpec, TransferModel
from lqf.models.zoo import BUILTIN_MODELS, available_models, build_model, wrap_module

__all__ = ["BUILTIN_MODELS", "InputSpec", "TransferModel", "available_models", "build_model", "wrap_module"]
