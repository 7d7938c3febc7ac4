"""Calibrated class probabilities of a linear run, and how sure each one is (``lqf predict``).

A linear run (LQF with the squared loss, the ridge probe) predicts scores ``mu(x)`` on the one-hot
scale, whose plain softmax is nearly flat (a confident ``0.9`` against ``0.1`` is a softmax of
45% against 20%). Its exact posterior variance ``sigma^2 v(x)``
(:meth:`~lqf.explain.explainer.Explainer.predict_with_variance`) and a temperature ``T`` give
probabilities (:mod:`lqf.explain.uncertainty`); ``T`` and ``sigma^2`` are chosen once on the run's
validation images by their negative log-likelihood and kept in the run directory
(``calibration.json``), so later calls cost only the images asked about.

How sure: the scores are Gaussian, ``s_c ~ N(mu_c / T, sigma^2 v_c / T^2)``; the spread of the
softmax over draws of them (:func:`probability_spread`, a fixed-seed Monte Carlo estimate) is the
``±`` that ``lqf predict`` prints beside each probability.
"""

from __future__ import annotations

import torch

from lqf.errors import LqfError
from lqf.explain.uncertainty import Calibration, fit_calibration
from lqf.io import read_json, write_json

CALIBRATION = "calibration.json"
#: draws of the scores behind each spread, and their seed
DRAWS = 4096
SEED = 0


def run_calibration(explainer, run) -> Calibration:
    """The run's temperature and noise: read from ``calibration.json``, or chosen on its validation
    images (and written there) the first time."""
    if run.has(CALIBRATION):
        saved = read_json(run.file(CALIBRATION))
        return Calibration(saved["temperature"], saved["noise"], saved["val_nll"])
    from lqf.data import load_config_data

    val = load_config_data(explainer.config).val
    if len(val) == 0:
        raise LqfError(
            f"run {run.path!r} has no validation images to calibrate its probabilities on; "
            "fit it again with --val-per-class 1 or more"
        )
    x = torch.cat([images for images, _ in val.batches(256)])
    mean, variance = explainer.predict_with_variance(x)
    cal = fit_calibration(mean, variance, val.labels)
    write_json(
        run.file(CALIBRATION),
        {
            "temperature": cal.temperature,
            "noise": cal.noise,
            "val_nll": cal.val_nll,
            "n_val": len(val),
            "rule": "temperature and noise of the lowest validation NLL on the grids of "
            "lqf.explain.uncertainty.fit_calibration",
        },
    )
    return cal


def probability_spread(cal: Calibration, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """The standard deviation ``(T, C)`` of each class's softmax probability when the scores are
    drawn from ``N(mu / T, sigma^2 v / T^2)`` (``DRAWS`` draws, the same for every image, seed
    ``SEED``; 0 where ``sigma^2 = 0``)."""
    gen = torch.Generator().manual_seed(SEED)
    eps = torch.randn((DRAWS, mean.shape[-1]), generator=gen, dtype=torch.float64)
    std = (cal.noise * variance.double().clamp_min(0)).sqrt() / cal.temperature
    z = mean.double() / cal.temperature
    out = torch.empty_like(z)
    for t in range(len(z)):  # one image at a time: DRAWS x C numbers
        out[t] = torch.softmax(z[t] + std[t] * eps, dim=-1).std(0)
    return out


def calibrated_predictions(path: str, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """For images ``(T, 3, S, S)`` in ``[0, 1]`` and the linear run at ``path``: ``probability``
    and its ``spread`` (``(T, C)`` each), the ``score`` means and their ``score_std``."""
    from lqf.explain.explainer import Explainer
    from lqf.runs import RunDirectory

    run = RunDirectory.existing(path)
    explainer = Explainer.from_run(path)
    cal = run_calibration(explainer, run)
    mean, variance = explainer.predict_with_variance(images)
    return {
        "probability": cal(mean, variance),
        "spread": probability_spread(cal, mean, variance),
        "score": mean,
        "score_std": (cal.noise * variance.clamp_min(0)).sqrt(),
        "temperature": torch.tensor(cal.temperature),
        "noise": torch.tensor(cal.noise),
    }


def is_linear_run(config, options) -> bool:
    """Whether :func:`calibrated_predictions` applies (LQF with the squared loss, the ridge probe
    with a learned head)."""
    from lqf.explain.runs import linear_kind

    try:
        kind = linear_kind(config.method, options)
    except LqfError:
        return False
    return kind in ("lqf", "probe") and config.head == "linear"
