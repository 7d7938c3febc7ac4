"""Linearization of a network around its pretrained weights (the LQF model)."""

from lqf.linearization.activations import LeakyReLU6, swap_activations
from lqf.linearization.linear_model import LinearizedModel

__all__ = ["LeakyReLU6", "LinearizedModel", "swap_activations"]
