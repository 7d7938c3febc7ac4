"""lqf.theory against exact references: GD simulations, dense matrices, finite differences,
Monte Carlo with 95% intervals (fixed seeds), and the CLI's one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lqf.cli.main import main
from lqf.errors import LqfError
from lqf.theory import deep_linear as dl
from lqf.theory import ntk
from lqf.theory.expectations import (
    Covariance,
    deterministic_risk,
    estimator,
    isotropic_expected_risk,
    monte_carlo_risk,
    similarity_measure,
    unseen_scale,
)
from lqf.theory.linear import (
    closest_interpolant,
    conditional_risk,
    gradient_descent,
    loo_errors,
    population_risk,
    ridge_loo,
    ridge_towards,
)


def _problem(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    theta_S = rng.standard_normal(d) / np.sqrt(d)
    theta_T = theta_S + 0.5 * rng.standard_normal(d) / np.sqrt(d)
    y = X @ theta_T + 0.1 * rng.standard_normal(n)
    return X, y, theta_S, theta_T


# -- linear regression -----------------------------------------------------------
@pytest.mark.parametrize(("n", "d"), [(5, 20), (12, 30), (40, 10)])
def test_gd_converges_to_closed_form(n: int, d: int) -> None:
    X, y, theta_S, _ = _problem(n, d)
    for start in (theta_S, np.zeros(d)):
        result = gradient_descent(X, y, start)
        assert result.converged
        np.testing.assert_allclose(result.theta, closest_interpolant(X, y, start), atol=1e-6, rtol=0)


def test_closed_form_is_the_interpolant_closest_to_the_start() -> None:
    X, y, theta_S, _ = _problem(6, 15)
    theta = closest_interpolant(X, y, theta_S)
    np.testing.assert_allclose(X @ theta, y, atol=1e-10)
    # any other interpolant theta + v (v in the null space of X) is farther from theta_S
    null = np.linalg.svd(X)[2][6:].T
    v = null @ np.random.default_rng(1).standard_normal(9)
    assert np.linalg.norm(theta + v - theta_S) > np.linalg.norm(theta - theta_S)
    assert abs((theta - theta_S) @ v) < 1e-10


def test_torch_features_give_torch_results() -> None:
    X, y, theta_S, _ = _problem(5, 12)
    out = closest_interpolant(torch.tensor(X, dtype=torch.float32), torch.tensor(y), torch.tensor(theta_S))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), closest_interpolant(X.astype(np.float32), y, theta_S), atol=1e-12)


def test_ridge_matches_normal_equations_and_loo_matches_brute_force() -> None:
    X, y, theta_S, _ = _problem(8, 20)
    n, d = X.shape
    lam = 0.3
    dense = np.linalg.solve(X.T @ X / n + lam * np.eye(d), X.T @ y / n + lam * theta_S)
    np.testing.assert_allclose(ridge_towards(X, y, theta_S, lam), dense, atol=1e-10)
    np.testing.assert_allclose(
        ridge_towards(X, y, theta_S, 1e-12), closest_interpolant(X, y, theta_S), atol=1e-6
    )
    lams = np.array([0.01, 0.1, 1.0])
    brute = []
    for lam in lams:
        errs = []
        for i in range(n):
            keep = np.arange(n) != i
            Xk, yk = X[keep], y[keep]
            th = theta_S + Xk.T @ np.linalg.solve(Xk @ Xk.T + n * lam * np.eye(n - 1), yk - Xk @ theta_S)
            errs.append((y[i] - X[i] @ th) ** 2)
        brute.append(np.mean(errs))
    np.testing.assert_allclose(loo_errors(X, y, theta_S, lams), brute, rtol=1e-9)
    assert ridge_loo(X, y, theta_S, lams)[0] == lams[int(np.argmin(brute))]


def test_conditional_risk_matches_noise_monte_carlo() -> None:
    X, _, theta_S, theta_T = _problem(6, 15)
    sigma = np.diag(np.linspace(0.5, 2.0, 15))
    bias, variance = conditional_risk(X, theta_S, theta_T, sigma, noise=0.5)
    assert bias == pytest.approx(
        population_risk(closest_interpolant(X, X @ theta_T, theta_S), theta_T, sigma)
    )
    rng = np.random.default_rng(3)
    risks = [
        population_risk(
            closest_interpolant(X, X @ theta_T + 0.5 * rng.standard_normal(6), theta_S), theta_T, sigma
        )
        for _ in range(4000)
    ]
    half = 1.96 * np.std(risks, ddof=1) / np.sqrt(len(risks))
    assert abs(np.mean(risks) - (bias + variance)) <= half


@pytest.mark.parametrize(
    ("n", "d", "dist", "noise", "method"),
    [
        (8, 30, 0.5, 0.0, "finetune"),
        (8, 30, 0.5, 0.3, "finetune"),
        (8, 30, 1.0, 0.3, "scratch"),
        (45, 20, 0.5, 0.3, "finetune"),
    ],
)
def test_isotropic_closed_form_inside_monte_carlo_interval(n, d, dist, noise, method) -> None:
    rng = np.random.default_rng(7)
    theta_T = rng.standard_normal(d)
    theta_T /= np.linalg.norm(theta_T)
    xi = rng.standard_normal(d)
    theta_S = theta_T + dist * xi / np.linalg.norm(xi)
    est = monte_carlo_risk(
        estimator(method, theta_S), n, Covariance.isotropic(d, 2.0), theta_T, noise=noise, draws=3000, seed=11
    )
    start = theta_S if method == "finetune" else np.zeros(d)
    closed = isotropic_expected_risk(n, d, float(np.sum((theta_T - start) ** 2)), noise, scale=2.0)
    assert est.contains(closed), (est.mean, est.half_width, closed)
    assert est.half_width < 0.05 * closed  # the interval is tight enough to mean something


def test_similarity_measure_exact_cases() -> None:
    d, n = 40, 10
    rng = np.random.default_rng(0)
    theta_S, theta_T = rng.standard_normal(d), rng.standard_normal(d)
    iso = Covariance.isotropic(d)
    assert similarity_measure(n, theta_S, theta_T, iso) == pytest.approx(
        (1 - n / d) * np.sum((theta_T - theta_S) ** 2)
    )
    kappa = unseen_scale(n, Covariance.power_law(d, 1.0).eigs)
    lam = Covariance.power_law(d, 1.0).eigs
    assert np.sum(lam / (lam + kappa)) == pytest.approx(n, rel=1e-10)
    # rank(Sigma) <= n: the samples see every direction Sigma has, the bias is exactly 0
    low = Covariance(np.r_[np.ones(5), np.zeros(d - 5)], np.eye(d))
    assert similarity_measure(n, theta_S, theta_T, low) == 0.0
    est = monte_carlo_risk(estimator("finetune", theta_S), n, low, theta_T, draws=50, seed=0)
    assert est.mean < 1e-20


def test_deterministic_equivalent_close_to_monte_carlo() -> None:
    """Power-law Sigma, d=100: within 5% at n=50 (the approximation is asymptotic, not exact)."""
    cov = Covariance.power_law(100, 1.5, seed=0)
    rng = np.random.default_rng(1)
    theta_S, theta_T = rng.standard_normal(100) / 10, rng.standard_normal(100) / 10
    est = monte_carlo_risk(estimator("finetune", theta_S), 50, cov, theta_T, noise=0.1, draws=400, seed=2)
    assert deterministic_risk(50, theta_S, theta_T, cov, 0.1) == pytest.approx(est.mean, rel=0.05)


def test_bad_problem_shapes_raise() -> None:
    with pytest.raises(LqfError, match="rows"):
        closest_interpolant(np.ones((3, 4)), np.ones(2), np.ones(4))
    with pytest.raises(LqfError, match="columns"):
        closest_interpolant(np.ones((3, 4)), np.ones(3), np.ones(5))
    with pytest.raises(LqfError, match="positive"):
        monte_carlo_risk(estimator("finetune", np.ones(3)), 0, Covariance.isotropic(3), np.ones(3))


# -- deep linear networks ----------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 7])
def test_balanced_factorization_reproduces_theta_S(depth: int) -> None:
    theta_S = np.random.default_rng(0).standard_normal(12)
    ws = dl.balanced_factorization(theta_S, depth, width=5, seed=1)
    assert len(ws) == depth
    np.testing.assert_allclose(dl.end_to_end(ws), theta_S, atol=1e-14, rtol=0)
    assert dl.balance_gap(ws) < 1e-13


def test_flow_limit_properties() -> None:
    X, y, theta_S, _ = _problem(5, 20)
    np.testing.assert_allclose(
        dl.flow_limit(X, y, theta_S, 1), closest_interpolant(X, y, theta_S), atol=1e-12
    )
    for L in (2, 5):
        w = dl.flow_limit(X, y, theta_S, L)
        np.testing.assert_allclose(X @ w, y, atol=1e-10)
    # theta_T = alpha theta_S without noise: depth -> infinity recovers theta_T exactly
    w = dl.flow_limit(X, X @ (3.0 * theta_S), theta_S, 100_000)
    np.testing.assert_allclose(w, 3.0 * theta_S, atol=1e-3)
    A, B, N, L = 0.7, 0.4, 1.3, 4
    c = dl.depth_scale(A, B, N, L)
    assert c == pytest.approx(((A + c**2 * B) / N) ** ((L - 1) / (2 * L)), rel=1e-12)


@pytest.mark.parametrize("depth", [2, 4])
def test_gd_on_factors_approaches_flow_limit_linearly_in_step(depth: int) -> None:
    """GD with step lr differs from the gradient-flow limit by O(lr): quartering lr quarters the error."""
    rng = np.random.default_rng(0)
    d, n = 20, 4
    theta_S = rng.standard_normal(d)
    X = rng.standard_normal((n, d))
    y = X @ (2 * theta_S + 0.3 * rng.standard_normal(d))
    ws = dl.balanced_factorization(theta_S, depth, width=4)
    limit = dl.flow_limit(X, y, theta_S, depth)
    top = np.linalg.norm(X, 2) ** 2 / n
    size = max(np.linalg.norm(theta_S), np.linalg.norm(np.linalg.pinv(X) @ y))
    lr = 0.5 / (depth * top * size ** (2 - 2 / depth))
    errs = [np.abs(dl.train_deep_linear(X, y, ws, lr=lr / k, tol=1e-14).w - limit).max() for k in (4, 16)]
    assert 3.0 < errs[0] / errs[1] < 5.0
    assert errs[1] < 1e-3


def test_depth_one_gd_equals_linear_closed_form() -> None:
    X, y, theta_S, _ = _problem(5, 20)
    res = dl.train_deep_linear(X, y, dl.balanced_factorization(theta_S, 1), tol=1e-20, max_steps=20_000)
    np.testing.assert_allclose(res.w, closest_interpolant(X, y, theta_S), atol=1e-6)


def test_frozen_first_layers_stay_on_the_source_line() -> None:
    X, _, theta_S, theta_T = _problem(10, 20)
    y = X @ theta_T
    ws = dl.balanced_factorization(theta_S, 5, width=4)
    res = dl.train_deep_linear(X, y, ws, frozen=2, max_steps=50_000)
    np.testing.assert_allclose(res.weights[0], ws[0])
    np.testing.assert_allclose(res.weights[1], ws[1])
    np.testing.assert_allclose(res.w, dl.frozen_limit(X, y, theta_S), atol=1e-6)
    with pytest.raises(LqfError, match="frozen"):
        dl.train_deep_linear(X, y, ws, frozen=5)


# -- two-layer ReLU networks ---------------------------------------------------------
def _net_and_data():
    net = ntk.TwoLayer.init(d=4, m=6, seed=0)
    net.a = net.a + np.random.default_rng(1).standard_normal(6) * 0.3  # break the antisymmetry
    X = np.random.default_rng(2).standard_normal((5, 4))
    return net, X


def test_empirical_ntk_equals_dense_jacobian_product() -> None:
    net, X = _net_and_data()
    J = ntk.jacobian(net, X)
    np.testing.assert_allclose(ntk.empirical_ntk(net, X, X[:3]), J @ ntk.jacobian(net, X[:3]).T, atol=1e-13)


def test_jacobian_against_autograd_and_finite_differences() -> None:
    net, X = _net_and_data()
    J = ntk.jacobian(net, X)

    def f(theta: torch.Tensor) -> torch.Tensor:
        W, a = theta[:24].reshape(6, 4), theta[24:]
        return torch.relu(torch.as_tensor(X) @ W.T) @ a / 6**0.5

    auto = torch.func.jacrev(f)(torch.as_tensor(net.flat()))
    np.testing.assert_allclose(J, auto.numpy(), atol=1e-13)
    theta, h = net.flat(), 1e-6
    fd = np.stack(
        [
            (ntk.TwoLayer.unflat(theta + h * e, 6, 4)(X) - ntk.TwoLayer.unflat(theta - h * e, 6, 4)(X))
            / (2 * h)
            for e in np.eye(theta.size)
        ],
        axis=1,
    )
    np.testing.assert_allclose(J, fd, atol=1e-7)


def test_train_gradient_against_finite_differences() -> None:
    net, X = _net_and_data()
    y = np.random.default_rng(3).standard_normal(5)
    lr = 1e-4
    stepped = ntk.train(net, X, y, lr=lr, steps=1).net.flat()
    grad = (net.flat() - stepped) / lr

    def loss(theta):
        return 0.5 * np.mean((ntk.TwoLayer.unflat(theta, 6, 4)(X) - y) ** 2)

    h = 1e-6
    fd = np.array([(loss(net.flat() + h * e) - loss(net.flat() - h * e)) / (2 * h) for e in np.eye(30)])
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_antisymmetric_init_is_zero_and_kernel_fit_interpolates() -> None:
    net = ntk.TwoLayer.init(d=5, m=200, seed=0)
    X = np.random.default_rng(0).standard_normal((8, 5))
    assert np.abs(net(X)).max() < 1e-14
    y = X @ np.ones(5)
    np.testing.assert_allclose(ntk.kernel_fit(net, X, y, X), y, atol=1e-9)


def test_wide_network_gd_close_to_kernel_regression() -> None:
    """Width 4000: GD of the network and NTK regression predict within 5% of the signal (rms)."""
    net = ntk.TwoLayer.init(d=5, m=4000, seed=0)
    rng = np.random.default_rng(1)
    X, Xt = rng.standard_normal((10, 5)), rng.standard_normal((200, 5))
    y = X @ np.ones(5) / np.sqrt(5)
    res = ntk.train(net, X, y, steps=3000)
    assert res.loss < 1e-8
    kern = ntk.kernel_fit(net, X, y, Xt)
    gap = np.sqrt(np.mean((res.net(Xt) - kern) ** 2))
    assert gap < 0.05 * np.sqrt(np.mean(kern**2))


# -- CLI ----------------------------------------------------------------------------------
def _one_line_error(args, capsys) -> str:
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("lqf: error:"), err
    return err[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["theory", "figure", "nope"], "unknown figure 'nope'"),
        (["theory", "figure"], "figure name"),
        (["theory", "risk", "--n", "0"], "--n must be positive"),
        (["theory", "risk", "--d", "-3"], "--d must be positive"),
        (["theory", "risk", "--noise", "-1"], "--noise must be non-negative"),
        (["theory", "risk", "--n", "x"], "invalid int value"),
    ],
)
def test_cli_errors_are_one_line(args, fragment, capsys) -> None:
    assert fragment in _one_line_error(args, capsys)


def test_cli_list_risk_and_figure(tmp_path, capsys) -> None:
    assert main(["theory", "list"]) == 0
    listing = capsys.readouterr().out
    assert "deep-depth" in listing and "ntk-sample-complexity" in listing
    assert main(["theory", "figure", "--list"]) == 0
    assert capsys.readouterr().out == listing
    assert main(["theory", "risk", "--d", "20", "--n", "5", "--draws", "50", "--depth", "3"]) == 0
    assert "deep-linear L=3" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    assert "is a file" in _one_line_error(
        ["theory", "figure", "deep-rescale", "--out", str(tmp_path / "file")], capsys
    )
    assert main(["theory", "figure", "deep-rescale", "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "deep-rescale.png").stat().st_size > 1000
    header = (tmp_path / "figs" / "deep-rescale.csv").read_text().splitlines()[0]
    assert header.startswith("rescaled,factor,depth,mc_mean")


def test_monte_carlo_separates_the_exact_noise_term_from_its_asymptotic_form() -> None:
    """Pure label noise: the interval holds sigma^2 n/(d-n-1) and excludes the asymptotic sigma^2 n/(d-n)."""
    n, d, noise = 8, 30, 0.5
    theta = np.ones(d) / np.sqrt(d)
    est = monte_carlo_risk(
        estimator("finetune", theta), n, Covariance.isotropic(d), theta, noise=noise, draws=4000, seed=5
    )
    assert est.contains(isotropic_expected_risk(n, d, 0.0, noise))
    assert not est.contains(noise**2 * n / (d - n))
    assert deterministic_risk(n, theta, theta, Covariance.isotropic(d), noise) == pytest.approx(
        noise**2 * n / (d - n)
    )
