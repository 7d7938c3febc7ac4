"""Leave-one-out, influence and forgetting against brute-force retraining (float64, 1e-6 relative).

"Retraining without example i" solves the same problem from scratch on the other examples: the
same linearization point, targets, metric and penalty on the parameters in the summed objective
(``mu = N lam`` for LQF, ``lam`` for the probes), by a dense solve of its normal equations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lqf.explain.ridge import DualRidge, PrimalRidge, ProbeRidge
from lqf.heads.probe import scale_bias_ridge
from lqf.linearization import LinearizedModel
from lqf.linearization.factors import JacobianFactors
from lqf.linearization.jacobian import jacobian
from lqf.solvers.ridge import ridge_path

TOL = 1e-6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _net(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, classes),
        )
        .double()
        .eval()
    )


def _setup(n: int = 52, classes: int = 4):
    net = _net(classes)
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    lin = LinearizedModel(net, [n for n, _ in net.named_parameters()])  # every layer linearized
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    xt = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    t = 2.0 * nn.functional.one_hot(y, classes).double()
    metric = [1.0 + (k % 3) for k in range(len(lin.delta))]
    return lin, x, xt, t, metric


def _retrain(lin, x, t, mu, metric, keep):
    """``dw`` of sum_{i in keep} ||f0 + J_i dw - t_i||^2 / 2 + mu / 2 ||dw||_M^2 (dense)."""
    j = jacobian(lin, x[keep]).reshape(-1, lin.num_linearized())
    r = (t[keep] - lin.primal(x[keep])).reshape(-1)
    m = torch.cat(
        [torch.full((d.numel(),), v, dtype=torch.float64) for d, v in zip(lin.delta, metric, strict=True)]
    )
    return torch.linalg.solve(j.T @ j + mu * torch.diag(m), j.T @ r)


def _outputs(lin, x, dw):
    j = jacobian(lin, x).reshape(-1, lin.num_linearized())
    return lin.primal(x) + (j @ dw).reshape(x.shape[0], -1)


def test_lqf_leave_one_out_influence_and_forgetting_equal_retraining() -> None:
    lin, x, xt, t, metric = _setup()
    n = x.shape[0]
    mu = 0.3
    ridge = DualRidge(JacobianFactors(lin, x, batch_size=7), t, mu, metric)
    full = _retrain(lin, x, t, mu, metric, torch.ones(n, dtype=torch.bool))
    assert _rel(torch.cat([d.reshape(-1) for d in ridge.delta()]), full) < TOL
    assert _rel(ridge.fitted(), _outputs(lin, x, full)) < TOL
    loo = ridge.loo_predictions()
    influence = ridge.influence(JacobianFactors(lin, xt))
    representer = ridge.representer(JacobianFactors(lin, xt))
    f_test = _outputs(lin, xt, full)
    assert _rel(representer.sum(1), f_test - lin.primal(xt)) < TOL
    for i in range(0, n, 5):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        dw = _retrain(lin, x, t, mu, metric, keep)
        assert _rel(loo[i], _outputs(lin, x[i : i + 1], dw)[0]) < TOL
        assert _rel(influence[:, i], f_test - _outputs(lin, xt, dw)) < TOL
    forgotten = [3, 4, 17, 40, 41]
    keep = torch.ones(n, dtype=torch.bool)
    keep[forgotten] = False
    want = _retrain(lin, x, t, mu, metric, keep)
    alpha = ridge.forget(forgotten)
    got = torch.cat([d.reshape(-1) for d in ridge.delta(alpha)])
    assert _rel(got, want) < TOL
    assert float(alpha.view(n, -1)[forgotten].abs().max()) == 0.0
    with pytest.raises(ValueError):
        ridge.forget([1, 1])


def test_probe_leave_one_out_and_forgetting_equal_refitting() -> None:
    g = torch.Generator().manual_seed(2)
    phi = torch.randn(60, 9, generator=g, dtype=torch.float64)
    y = nn.functional.one_hot(torch.arange(60) % 3, 3).double()
    lam = 0.7
    probe = ProbeRidge(phi, y, lam)
    ((w, b),) = ridge_path(phi, y, [lam])  # the probe's own fit: centred ridge, bias free
    assert _rel(probe.weights[:-1], w) < TOL and _rel(probe.weights[-1], b) < TOL
    test = torch.randn(4, 9, generator=g, dtype=torch.float64)
    influence = probe.influence(test)
    f_test = test @ w + b
    assert _rel(probe.representer(test).sum(1), f_test) < TOL
    loo = probe.loo_predictions()
    for i in (0, 7, 33, 59):
        keep = torch.ones(60, dtype=torch.bool)
        keep[i] = False
        ((wi, bi),) = ridge_path(phi[keep], y[keep], [lam])
        assert _rel(loo[i], phi[i] @ wi + bi) < TOL
        assert _rel(influence[:, i], f_test - (test @ wi + bi)) < TOL
    keep = torch.ones(60, dtype=torch.bool)
    keep[[2, 5, 9]] = False
    ((ws, bs),) = ridge_path(phi[keep], y[keep], [lam])
    assert _rel(probe.forget([2, 5, 9]), torch.cat([ws, bs.unsqueeze(0)])) < TOL


def test_fixed_head_probe_leave_one_out_equals_refitting() -> None:
    """Scale and bias of a fixed head: rows ``alpha g_ic + b_c``, the penalty on ``alpha`` only."""
    g = torch.Generator().manual_seed(3)
    n, c = 55, 4
    cos = torch.randn(n, c, generator=g, dtype=torch.float64)
    y = nn.functional.one_hot(torch.arange(n) % c, c).double()
    rel = 0.2
    energy = float((cos - cos.mean(0)).pow(2).sum())
    design = torch.cat([cos.unsqueeze(2), torch.eye(c, dtype=torch.float64).expand(n, c, c)], 2)
    penalty = torch.zeros(c + 1, c + 1, dtype=torch.float64)
    penalty[0, 0] = rel * energy
    ridge = PrimalRidge(design, y, penalty)
    ((alpha, bias),) = scale_bias_ridge(cos, y, [rel])  # the fixed head's own closed form
    assert abs(float(ridge.theta[0]) - alpha) < TOL * abs(alpha) and _rel(ridge.theta[1:], bias) < TOL
    loo = ridge.loo_predictions()
    test = torch.cat(
        [torch.randn(2, c, 1, generator=g, dtype=torch.float64), torch.eye(c).double().expand(2, c, c)], 2
    )
    influence = ridge.influence(test)
    for i in (0, 10, 54):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        flat = design[keep].reshape(-1, c + 1)
        theta = torch.linalg.solve(flat.T @ flat + penalty, flat.T @ y[keep].reshape(-1))
        assert _rel(loo[i], design[i] @ theta) < TOL
        assert _rel(influence[:, i], test @ ridge.theta - test @ theta) < TOL
    assert _rel(ridge.representer(test).sum(1), test @ ridge.theta) < TOL
