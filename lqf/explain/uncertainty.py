"""Class probabilities from a linear model's outputs and its exact posterior variance.

A run of a linear method (LQF with the squared loss, the ridge probe) predicts scores ``mu(x)``
fitted to one-hot targets, and :meth:`~lqf.explain.ridge.DualRidge.posterior_variance` gives the
variance ``sigma^2 v_c(x)`` of each score under the Bayesian linear regression whose posterior
mean they are. Scores on the one-hot scale are no logits, so probabilities take a temperature
``T`` on the mean and the probit approximation of the softmax of a Gaussian (MacKay 1992):

    p_c(x) = softmax_c( (mu_c(x) / T) / sqrt(1 + pi / 8 * sigma^2 v_c(x) / T^2) ).

``T`` and ``sigma^2`` are chosen together on the validation images by their negative
log-likelihood (:func:`fit_calibration`, a grid): the rule is stated, the test split never read.
``sigma^2 = 0`` is on the grid, so the variance is used only where it lowers validation NLL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: the grids of fit_calibration: temperatures, and noise variances relative to the mean variance
TEMPERATURES = tuple(10 ** (k / 8) for k in range(-24, 9))
NOISE = (0.0, *(10 ** (k / 2) for k in range(-6, 7)))


def probabilities(
    mean: torch.Tensor, variance: torch.Tensor, temperature: float, noise: float
) -> torch.Tensor:
    """``(T, C)`` class probabilities from scores ``mean`` and unit variances ``variance``."""
    z = mean.double() / temperature
    var = noise * variance.double() / temperature**2
    return torch.softmax(z / torch.sqrt(1 + math.pi / 8 * var), dim=1)


def nll(p: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-torch.log(p[torch.arange(len(labels)), labels].clamp_min(1e-12)).mean())


@dataclass
class Calibration:
    """The chosen ``temperature`` and ``noise`` (``sigma^2``), and the validation NLL they reach."""

    temperature: float
    noise: float
    val_nll: float

    def __call__(self, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        return probabilities(mean, variance, self.temperature, self.noise)


def fit_calibration(mean: torch.Tensor, variance: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """``T`` and ``sigma^2`` of the lowest validation NLL on the grids (``sigma^2`` relative to the
    mean of ``variance``); ties go to the smaller ``sigma^2``, then the larger ``T``."""
    if len(labels) == 0:
        raise ValueError("calibration needs validation images")
    scale = float(variance.double().mean()) or 1.0
    best = None
    for noise in NOISE:
        for t in TEMPERATURES:
            value = nll(probabilities(mean, variance, t, noise / scale), labels)
            key = (round(value, 12), noise, -t)
            if best is None or key < best[0]:
                best = (key, Calibration(t, noise / scale, value))
    return best[1]
