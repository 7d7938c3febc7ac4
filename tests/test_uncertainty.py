"""The predictive variance of linear runs against the closed-form posterior of a dense Bayesian
linear regression (float64, 1e-8 relative), and the calibration rule."""

from __future__ import annotations

import math

import torch
from torch import nn

from lqf.explain.ridge import DualRidge, ProbeRidge
from lqf.explain.uncertainty import fit_calibration, probabilities
from lqf.linearization.factors import JacobianFactors
from lqf.linearization.jacobian import jacobian

from .test_explain import _setup

TOL = 1e-8


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_lqf_variance_is_the_bayesian_linear_regression_posterior() -> None:
    """t = f0 + J dw + eps, dw ~ N(0, s^2 M^-1), eps ~ N(0, sigma^2): the posterior covariance of
    dw is sigma^2 (J^T J + mu M)^-1 with mu = sigma^2 / s^2, so Var f(x) = sigma^2 J(x) (...)^-1 J(x)^T."""
    lin, x, xt, t, metric = _setup(n=30)
    mu, sigma2 = 0.4, 0.7
    ridge = DualRidge(JacobianFactors(lin, x, batch_size=7), t, mu, metric)
    got = sigma2 * ridge.posterior_variance(JacobianFactors(lin, xt))
    p = lin.num_linearized()
    j = jacobian(lin, x).reshape(-1, p)
    jt = jacobian(lin, xt).reshape(-1, p)
    m = torch.cat(
        [torch.full((d.numel(),), v, dtype=torch.float64) for d, v in zip(lin.delta, metric, strict=True)]
    )
    cov = sigma2 * torch.linalg.inv(j.T @ j + mu * torch.diag(m))
    want = ((jt @ cov) * jt).sum(1).view(xt.shape[0], -1)
    assert _rel(got, want) < TOL
    # and the posterior mean is the ridge solution (what the run predicts)
    mean = cov @ j.T @ (t - lin.primal(x)).reshape(-1) / sigma2
    assert _rel(torch.cat([d.reshape(-1) for d in ridge.delta()]), mean) < TOL


def test_probe_variance_is_the_posterior_with_a_flat_bias_prior() -> None:
    """W ~ N(0, sigma^2 / lam), b ~ N(0, tau^2) with tau -> infinity: Gaussian conditioning in
    function space, with tau^2 = 1e8 (its error is of order 1/tau^2)."""
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = nn.functional.one_hot(torch.arange(40) % 3, 3).double()
    test = torch.randn(5, 6, generator=g, dtype=torch.float64)
    lam, sigma2, tau2 = 0.5, 0.3, 1e8
    got = sigma2 * ProbeRidge(phi, y, lam).posterior_variance(test)
    prior = lambda a, b: sigma2 / lam * a @ b.T + tau2  # noqa: E731  cov of f under the prior
    k_tt, k_tx, k_xx = prior(test, test), prior(test, phi), prior(phi, phi)
    post = k_tt - k_tx @ torch.linalg.solve(k_xx + sigma2 * torch.eye(40, dtype=torch.float64), k_tx.T)
    want = post.diagonal().unsqueeze(1).expand(-1, 3)
    assert _rel(got, want) < 1e-5


def test_calibration_is_chosen_on_validation_and_uses_variance_only_when_it_helps() -> None:
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (400,), generator=g)
    mean = nn.functional.one_hot(labels, 4).double() * 0.6 + 0.2 * torch.randn(400, 4, generator=g)
    variance = torch.zeros(400, 4, dtype=torch.float64)
    cal = fit_calibration(mean, variance, labels)
    assert cal.noise == 0.0  # a variance that carries nothing is not used
    best = cal.val_nll
    for t in (cal.temperature / 2, cal.temperature * 2):  # a minimum on the grid
        p = probabilities(mean, variance, t, 0.0)
        assert -torch.log(p[torch.arange(400), labels]).mean() >= best - 1e-12
    # probit: a larger variance flattens the probabilities towards uniform
    p = probabilities(mean[:1], torch.full((1, 4), 1e6, dtype=torch.float64), 1.0, 1.0)
    assert float((p - 0.25).abs().max()) < 1e-2
    assert math.isfinite(cal.val_nll)
