"""K-FAC against the dense Gauss-Newton matrix, and its fast inverse against a dense solve."""

from __future__ import annotations

import torch
from torch import nn

from lqf.curvature import KFAC
from lqf.linearization import LinearizedModel
from lqf.linearization.jacobian import jacobian


class _Net(nn.Module):
    """Dense, grouped and depthwise convolutions whose output is 1x1 (T = 1), BN, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3)  # 3x3 input -> 1x1 output
        self.bn = nn.BatchNorm2d(6)
        self.grouped = nn.Conv2d(6, 6, 1, groups=3, bias=False)
        self.depthwise = nn.Conv2d(6, 6, 1, groups=6)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x)))
        h = torch.tanh(self.depthwise(self.grouped(h))).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


def _setup(n: int, seed: int = 0):
    torch.manual_seed(seed)
    net = _Net().double().eval()
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
    lin = LinearizedModel(net, [n for n, _ in net.named_parameters()])
    x = torch.randn(n, 4, 3, 3, dtype=torch.float64)
    jac = jacobian(lin, x).reshape(n * 3, -1)
    return lin, x, jac.T @ jac / n


def _layer_columns(kfac: KFAC, block) -> torch.Tensor:
    idx = torch.arange(kfac.offsets[-1], dtype=torch.float64)
    return kfac._views(block, idx).long()


def test_kfac_is_exact_for_one_sample_without_weight_sharing() -> None:
    """For N = 1 and T = 1, sum_c (g_c g_c^T) (x) (a a^T) is the exact GGN block (float64, 1e-10)."""
    lin, x, ggn = _setup(1)
    kfac = KFAC(lin, x)
    dense = kfac.dense()
    assert len(kfac.blocks) == 5  # conv, grouped, depthwise, fc1, fc2
    for block in kfac.blocks:
        cols = _layer_columns(kfac, block)
        for g in range(block.groups):
            c = cols[g].reshape(-1)
            assert torch.allclose(dense[c][:, c], ggn[c][:, c], atol=1e-10)
    # the other tensors (BatchNorm scale and shift) get the exact diagonal
    for i in kfac.diagonal_index:
        r = torch.arange(kfac.offsets[i], kfac.offsets[i + 1])
        assert torch.allclose(dense[r, r], ggn[r, r], atol=1e-12)


def test_kfac_factors_match_their_definition_for_many_samples() -> None:
    """A = mean a a^T, G = sum g g^T (brute force per sample): kfac(ggn) of fc2 for N = 7."""
    lin, x, _ = _setup(7)
    kfac = KFAC(lin, x, batch_size=3)  # batching must not change the sums
    net = lin.module
    with torch.no_grad():
        h = torch.tanh(net.depthwise(net.grouped(torch.tanh(net.bn(net.conv(x)))))).flatten(1)
        a = torch.cat([torch.tanh(net.fc1(h)), torch.ones(7, 1, dtype=torch.float64)], dim=1)
    block = next(b for b in kfac.blocks if b.module is net.fc2)
    assert torch.allclose(block.A[0], a.T @ a / 7, atol=1e-12)
    # fc2 is the output layer: g for output c is the unit vector e_c, so G = N I
    assert torch.allclose(block.G[0], 7 * torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_kfac_inverse_matches_a_dense_solve() -> None:
    lin, x, _ = _setup(5)
    kfac = KFAC(lin, x)
    p = kfac.offsets[-1]
    v = torch.randn(p, dtype=torch.float64)
    lam, damping = 0.3, 0.05
    ref = torch.linalg.solve(kfac.dense() + (lam + damping) * torch.eye(p, dtype=torch.float64), v)
    assert torch.allclose(kfac.inverse(v, damping, lam), ref, rtol=1e-8, atol=1e-10)
