"""lqf.theory.transfer against exact references.

* the tangent kernel of head + last block (closed form per channel) against ``J J^T`` from the
  dense per-sample Jacobian of :mod:`lqf.solvers.jacobian` on a tiny network, float64, to 1e-10
  relative;
* the cross-fitted scores against a from-scratch reference that refits the probe by a dense
  solve, sets it as the head, takes the dense Jacobian and solves the ridge problem in
  parameter space, to 1e-8;
* LogME's evidence against the dense Gaussian density, and its maximum against a grid and a
  numerical optimiser; LEEP against a hand-computed example.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lqf.cli.main import main
from lqf.errors import LqfError
from lqf.linearization import LinearizedModel
from lqf.linearization.jacobian import jacobian
from lqf.models.transfer import SYMMETRIC, TransferModel
from lqf.solvers.ridge import mean_eigenvalue, ridge_direct
from lqf.theory import scores
from lqf.theory import transfer as tr


class _BNAct(nn.BatchNorm2d):
    """BatchNorm with its activation attached, as timm's ``BatchNormAct2d``."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__(channels)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class _Backbone(nn.Module):
    """stem conv -> conv_head (1x1) -> bn2 + act -> global average pool: ``(B, 3, 8, 8) -> (B, D)``."""

    def __init__(self, cin: int, d: int, act: nn.Module, bias: bool) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, cin, 3, stride=2, padding=1)
        self.conv_head = nn.Conv2d(cin, d, 1, bias=bias)
        self.bn2 = _BNAct(d, act)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pool(self.bn2(self.conv_head(self.conv_stem(x))))


def _model(act: nn.Module, bias: bool, classes: int = 3, seed: int = 0) -> TransferModel:
    torch.manual_seed(seed)
    model = TransferModel(_Backbone(4, 6, act, bias), 6, classes, SYMMETRIC)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        bn = model.features.bn2
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.8)
        model.head.weight.normal_()
    return model.double().eval()


def _block_names(model: TransferModel) -> list[str]:
    return [
        n for n, _ in model.named_parameters() if n.startswith(("features.conv_head", "features.bn2", "head"))
    ]


@pytest.mark.parametrize("act, bias", [(nn.ReLU6(), False), (nn.SiLU(), True)])
def test_tangent_kernel_matches_dense_jacobian(act: nn.Module, bias: bool) -> None:
    model = _model(act, bias)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    feats = tr.tangent_features(model, x, batch_size=2)
    assert torch.allclose(feats.phi, model.embed(x).detach(), rtol=1e-12, atol=1e-12)
    gram = tr.block_gram(feats.blocks)
    kernel = tr.tangent_kernel(feats.phi, gram, model.head.weight.detach())
    lin = LinearizedModel(model, _block_names(model))
    j = jacobian(lin, x).reshape(5 * 3, -1)  # rows sample-major: (i, c) -> i C + c
    ref = j @ j.T
    assert torch.allclose(kernel, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    # a sub-block (rows, cols) is the same sub-block of the full kernel
    rows, cols = torch.tensor([4, 1]), torch.tensor([0, 2, 3])
    sub = tr.tangent_kernel(feats.phi, gram, model.head.weight.detach(), rows, cols)
    ridx = (rows[:, None] * 3 + torch.arange(3)).flatten()
    cidx = (cols[:, None] * 3 + torch.arange(3)).flatten()
    assert torch.allclose(sub, ref[ridx][:, cidx], rtol=1e-10, atol=1e-10 * float(ref.abs().max()))


def _reference_cross_fit(model: TransferModel, x: torch.Tensor, labels: torch.Tensor, folds, rp, rt):
    """Held-out predictions of the probe (dense normal equations) and of the parameter-space ridge
    ``min ||J dw - (Y - f0)||^2 + lambda s ||dw||^2`` with the dense Jacobian at the probe head."""
    c = model.num_classes
    y = nn.functional.one_hot(labels, c).double()
    phi = model.embed(x).detach()
    n = len(labels)
    probe, tangent = torch.zeros(n, c, dtype=torch.float64), torch.zeros(n, c, dtype=torch.float64)
    for held in folds:
        train = torch.tensor([i for i in range(n) if i not in set(held.tolist())])
        w, b = ridge_direct(phi[train], y[train], rp * mean_eigenvalue(phi[train]))
        probe[held] = phi[held] @ w + b
        with torch.no_grad():
            model.head.weight.copy_(w.T)
            model.head.bias.copy_(b)
        lin = LinearizedModel(model, _block_names(model))
        jt = jacobian(lin, x[train]).reshape(len(train) * c, -1)
        jh = jacobian(lin, x[held]).reshape(len(held) * c, -1)
        resid = (y[train] - model(x[train]).detach()).reshape(-1)
        s = float(torch.trace(jt @ jt.T)) / jt.shape[0]
        p = jt.shape[1]
        dw = torch.linalg.solve(jt.T @ jt + rt * s * torch.eye(p, dtype=torch.float64), jt.T @ resid)
        tangent[held] = model(x[held]).detach() + (jh @ dw).reshape(len(held), c)
        for q in model.parameters():
            q.requires_grad_(True)
    mse = lambda f: float(((f - y) ** 2).sum(1).mean())  # noqa: E731
    return mse(probe), mse(tangent)


def test_cross_fit_matches_parameter_space_reference() -> None:
    model = _model(nn.ReLU6(), False)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(12, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(12) % 3
    feats = tr.tangent_features(model, x)
    probe_grid, tangent_grid = (1e-2, 1e-1, 1.0), (1e-3, 1e-1, 10.0)
    out = tr.cross_fit(feats, labels, 3, folds=4, seed=5, probe_grid=probe_grid, tangent_grid=tangent_grid)
    folds = tr.stratified_folds(labels, 4, 5)
    # the chosen lambdas minimise the K-fold error over the grids: check the minimum is attained
    probe_ref = {
        rp: _reference_cross_fit(_model(nn.ReLU6(), False), x, labels, folds, rp, 1.0)[0] for rp in probe_grid
    }
    assert out["probe_ridge_relative"] == min(probe_ref, key=probe_ref.get)
    rp = out["probe_ridge_relative"]
    tangent_ref = {
        rt: _reference_cross_fit(_model(nn.ReLU6(), False), x, labels, folds, rp, rt)[1]
        for rt in tangent_grid
    }
    assert out["tangent_ridge_relative"] == min(tangent_ref, key=tangent_ref.get)
    assert out["probe_mse"] == pytest.approx(probe_ref[rp], rel=1e-8)
    assert out["tangent_mse"] == pytest.approx(tangent_ref[out["tangent_ridge_relative"]], rel=1e-8)
    assert out["tangent_gd_mse"] == pytest.approx(tangent_ref[tangent_grid[0]], rel=1e-8)
    assert out["gain_mse"] == pytest.approx(out["probe_mse"] - out["tangent_mse"], abs=1e-15)
    # lambda = inf: no update, the linearized model predicts exactly as the probe
    still = tr.cross_fit(feats, labels, 3, folds=4, seed=5, probe_grid=probe_grid, tangent_grid=(math.inf,))
    assert still["tangent_mse"] == still["probe_mse"] and still["gain_mse"] == 0.0


def test_stratified_folds_partition_and_balance() -> None:
    labels = torch.tensor([0, 1, 2] * 5 + [0])
    folds = tr.stratified_folds(labels, 5, seed=2)
    joined = torch.cat(folds).sort().values
    assert torch.equal(joined, torch.arange(len(labels)))
    for f in folds:  # every fold holds one image of each class (class 0: one fold holds two)
        assert set(labels[f].tolist()) == {0, 1, 2}


def test_last_block_rejects_other_backbones() -> None:
    model = TransferModel(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4, 2, SYMMETRIC
    )
    with pytest.raises(LqfError, match="conv_head"):
        tr.tangent_features(model, torch.rand(2, 3, 8, 8))


def _dense_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta), by a dense Cholesky factorisation."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, y)
    return float(-0.5 * n * math.log(2 * math.pi) - np.log(np.diag(chol)).sum() - 0.5 * sol @ sol)


def test_log_evidence_matches_dense_density() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((20, 5), (6, 15)):
        f = rng.standard_normal((n, d))
        y = rng.standard_normal(n)
        for alpha, beta in ((0.3, 2.0), (5.0, 0.1), (1.0, 50.0)):
            got = scores.log_evidence(torch.from_numpy(f), torch.from_numpy(y), alpha, beta)
            assert got == pytest.approx(_dense_log_evidence(f, y, alpha, beta), rel=1e-10, abs=1e-10)


def test_maximise_evidence_interior_maximum() -> None:
    """n > D with noise: the maximum is interior; the fixed point matches a grid refined by
    Nelder-Mead (in log alpha, log beta) to 1e-6 and is no lower than any grid point."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    f = rng.standard_normal((40, 6))
    y = f @ rng.standard_normal(6) * 0.5 + 0.7 * rng.standard_normal(40)
    value, alpha, beta = scores.maximise_evidence(torch.from_numpy(f), torch.from_numpy(y))
    assert math.isfinite(beta)
    grid = np.exp(np.linspace(-6, 6, 61))
    values = [(_dense_log_evidence(f, y, a, b), a, b) for a in grid for b in grid]
    best = max(values)
    assert value >= best[0] - 1e-9
    res = minimize(
        lambda t: -_dense_log_evidence(f, y, math.exp(t[0]), math.exp(t[1])),
        [math.log(best[1]), math.log(best[2])],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
    )
    assert value == pytest.approx(-res.fun, abs=1e-6)
    assert math.log(alpha) == pytest.approx(res.x[0], abs=1e-3)
    assert math.log(beta) == pytest.approx(res.x[1], abs=1e-3)


@pytest.mark.parametrize("noise, limit", [(0.1, True), (2.0, False)])
def test_maximise_evidence_fewer_samples_than_features(noise: float, limit: bool) -> None:
    """n < D (rank n). Features that carry the label plus little noise: the supremum is the
    beta -> infinity limit, which the dense evidence approaches from below as beta grows. More
    noise: an interior maximum. Either way no grid point exceeds the returned value."""
    rng = np.random.default_rng(2)
    y = np.array([1, 0, 0, 1, 0, 1, 0, 0.0])
    f = np.outer(y, rng.standard_normal(30)) + noise * rng.standard_normal((8, 30))
    value, alpha, beta = scores.maximise_evidence(torch.from_numpy(f), torch.from_numpy(y))
    assert (beta == math.inf) == limit
    grid = np.exp(np.linspace(-8, 14, 45))
    assert max(_dense_log_evidence(f, y, a, b) for a in grid for b in grid) <= value + 1e-9
    if limit:
        assert _dense_log_evidence(f, y, alpha, 1e6) < value
        assert _dense_log_evidence(f, y, alpha, 1e10) == pytest.approx(value, abs=1e-6)
    else:
        assert _dense_log_evidence(f, y, alpha, beta) == pytest.approx(value, rel=1e-10)


def test_logme_averages_class_maxima() -> None:
    rng = np.random.default_rng(3)
    f = torch.from_numpy(rng.standard_normal((8, 30)))
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 0, 1])
    per_class = [scores.maximise_evidence(f, (labels == c).double())[0] for c in range(3)]
    assert scores.logme(f, labels) == pytest.approx(sum(per_class) / (3 * 8), rel=1e-12)


def test_leep_hand_computed() -> None:
    theta = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # P(y, z) = [[1.2, 0.8], [0.1, 0.9]] / 3; P(z) = [1.3, 1.7] / 3;
    # P(y | z) = [[12/13, 8/17], [1/13, 9/17]]
    eep = [0.8 * 12 / 13 + 0.2 * 8 / 17, 0.4 * 12 / 13 + 0.6 * 8 / 17, 0.1 * 1 / 13 + 0.9 * 9 / 17]
    assert scores.leep(theta, labels) == pytest.approx(sum(math.log(e) for e in eep) / 3, rel=1e-12)
    # a source that names the target class exactly: LEEP = log 1 = 0
    assert scores.leep(torch.eye(3, dtype=torch.float64), torch.tensor([2, 0, 1])) == pytest.approx(
        0.0, abs=1e-15
    )


def test_cli_transfer_scores_and_errors(tiny_model_spec: str, image_folder, capsys) -> None:
    args = ["theory", "transfer", "--data", "digits", "--shots", "2", "--image-size", "32", "--json"]
    assert main([*args, "--model", "efficientnet_lite0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["folds"] == 2 and out["leep"] < 0 and math.isfinite(out["logme"])
    assert out["gain_mse"] == pytest.approx(out["probe_mse"] - out["tangent_mse"])
    for bad, fragment in (
        (["--shots", "1"], "--shots must be >= 2"),
        (["--folds", "1"], "--folds must be >= 2"),
        (
            [
                "--model",
                tiny_model_spec,
                "--data",
                f"imagefolder:{image_folder}",
                "--val-per-class",
                "0",
                "--shots",
                "3",
            ],
            "conv_head",
        ),
    ):
        code = main(["theory", "transfer", *bad])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1 and fragment in err[0], err
