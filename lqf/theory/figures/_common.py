"""Shared helpers of the figures: task pairs and confidence bands."""

from __future__ import annotations

from typing import Any

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def perturbed_target(theta_S: np.ndarray, alpha: float, eps: float, rng: np.random.Generator) -> np.ndarray:
    """``theta_T = alpha theta_S + eps ||theta_S|| xi``, ``xi`` random, unit, orthogonal to theta_S."""
    xi = rng.standard_normal(theta_S.shape[0])
    xi -= (xi @ theta_S) / (theta_S @ theta_S) * theta_S
    return alpha * theta_S + eps * np.linalg.norm(theta_S) * unit(xi)


def band(ax: Any, xs: Any, est: list, label: str, style: str = "-o", **kw: Any) -> None:
    """Plot Monte Carlo means with their 95% intervals as a shaded band."""
    mean = np.array([e.mean for e in est])
    half = np.array([e.half_width for e in est])
    (line,) = ax.plot(xs, mean, style, label=label, markersize=3, **kw)
    ax.fill_between(xs, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
