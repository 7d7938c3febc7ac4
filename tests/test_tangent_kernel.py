"""The factored Jacobian and the tangent kernel against the dense Jacobian (float64).

Every fast path here has the dense ``J`` of :func:`lqf.linearization.jacobian.jacobian`
(per-sample ``jacrev``) as its exact twin: the factored rows, ``J v``, ``J^T u``, the kernel
``J M^-1 J^T`` (symmetric and between two input sets, with a metric that is not the identity)
and its diagonal. Tolerance: 1e-9 relative in float64 (rounding gives about 1e-15).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lqf.linearization import LinearizedModel
from lqf.linearization.factors import JacobianFactors
from lqf.linearization.jacobian import jacobian
from lqf.linearization.kernel import tangent_kernel
from lqf.linearization.lqf_model import LQFModel
from lqf.linearization.streamed import StreamedJacobian
from lqf.methods.lqf import _link_input, select_linearized
from lqf.models import build_model

TOL = 1e-9


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _metric(lin: LinearizedModel) -> list[float]:
    return [1.0 + (i % 3) for i in range(len(lin.delta))]


def _dense_kernel(lin, x1, x2, metric):
    j1 = jacobian(lin, x1).reshape(-1, lin.num_linearized())
    j2 = jacobian(lin, x2).reshape(-1, lin.num_linearized())
    minv = torch.cat(
        [torch.full((d.numel(),), 1 / m, dtype=d.dtype) for d, m in zip(lin.delta, metric, strict=True)]
    )
    return j1, (j1 * minv) @ j1.T, (j1 * minv) @ j2.T


def _check(lin: LinearizedModel, x1: torch.Tensor, x2: torch.Tensor, kinds: set[str] | None = None) -> None:
    f1 = JacobianFactors(lin, x1, batch_size=3)
    f2 = JacobianFactors(lin, x2, batch_size=2)
    if kinds is not None:
        assert {b[0] for b in f1.blocks} == kinds
    metric = _metric(lin)
    j1, k11, k12 = _dense_kernel(lin, x1, x2, metric)
    assert _rel(f1.dense(), j1) < TOL
    assert torch.allclose(f1.outputs, lin.primal(x1), rtol=0, atol=1e-12)
    v = [torch.randn_like(d) for d in lin.delta]
    assert _rel(f1.jvp(v), lin.jvp(x1, v)) < TOL
    u = torch.randn(x1.shape[0], f1.classes, dtype=torch.float64)
    got = torch.cat([t.reshape(-1) for t in f1.vjp(u)])
    want = torch.cat([t.reshape(-1) for t in lin.vjp(x1, u)])
    assert _rel(got, want) < TOL
    assert _rel(tangent_kernel(f1, metric=metric), k11) < TOL
    assert _rel(tangent_kernel(f1, f2, metric=metric), k12) < TOL
    # the parts W processes compute (torchrun) sum to the kernel
    for parts in (2, 3):
        split = [tangent_kernel(f1, metric=metric, part=(p, parts)) for p in range(parts)]
        assert _rel(sum(split), k11) < TOL and not torch.equal(split[0], k11)
    _, plain, _ = _dense_kernel(lin, x1, x2, [1.0] * len(lin.delta))
    kernel = tangent_kernel(f1)
    assert _rel(kernel, plain) < TOL and torch.equal(kernel, kernel.T)  # M = I; exactly symmetric
    assert _rel(f1.diagonal(metric).reshape(-1), k11.diagonal()) < TOL


def _linear_part(model, spec: str, probe: torch.Tensor):
    names = select_linearized(model, spec)
    split = _link_input(model, names, probe)
    prefix, suffix = split if split is not None else (None, None)
    lqf = LQFModel(model, names, prefix, suffix)
    return lqf.linear, lqf.features_in


@pytest.mark.parametrize("spec,size", [("last-3", 64), ("all", 32)])
def test_efficientnet_lite0_every_layer_type(spec, size) -> None:
    """Conv2dSame (TF padding, stride 2), depthwise and 1x1 convolutions, BatchNormAct2d, the head."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 5, pretrained=False).double().eval()
    x = torch.rand(7, 3, size, size, dtype=torch.float64)
    lin, features_in = _linear_part(model, spec, x[:2])
    z = features_in(x)
    _check(lin, z[:5], z[5:], kinds={"struct", "dense"})


def test_resnet18_every_layer_type() -> None:
    """Padded strided convolutions, BatchNorm2d, residual downsampling, the linear head."""
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 4, pretrained=False).double().eval()
    x = torch.rand(5, 3, 32, 32, dtype=torch.float64)
    lin, features_in = _linear_part(model, "all", x[:2])
    _check(lin, features_in(x[:3]), features_in(x[3:]))


class _Scale(nn.Module):
    """A module the factor rules do not know: its rows come from per-sample jacrev."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 1))

    def forward(self, x):
        return x * torch.tanh(self.weight)


class _Zoo(nn.Module):
    """Grouped, dilated, strided, 'same'-padded and biased convolutions, GroupNorm, a module
    called twice, tokens through Linear and LayerNorm, and a parameter used outside its module."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding="same", dilation=2, bias=True)
        self.grouped = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=2, bias=True)
        self.norm = nn.GroupNorm(2, 6)
        self.scale = _Scale(6)
        self.shared = nn.Conv2d(6, 6, 1, bias=False)
        self.tokens = nn.Linear(6, 5)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, classes)
        self.loose = nn.Linear(5, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = self.scale(self.norm(self.grouped(y)))
        y = self.shared(torch.tanh(self.shared(y)))
        t = y.flatten(2).transpose(1, 2)  # (B, tokens, 6)
        t = self.ln(torch.tanh(self.tokens(t)))
        t = t + t @ self.loose.weight.T  # a weight used without calling its module
        return self.head(t.mean(1))


def test_every_rule_and_the_fallbacks_on_a_zoo_of_layers() -> None:
    torch.manual_seed(0)
    model = _Zoo().double().eval()
    names = [n for n, _ in model.named_parameters()]
    lin = LinearizedModel(model, names)
    x = torch.rand(5, 4, 8, 8, dtype=torch.float64)
    _check(lin, x[:3], x[3:])
    f = JacobianFactors(lin, x[:3])
    kinds = {s.name: (s.kind, s.fallback) for s in f.sites}
    assert kinds["scale"] == ("dense", True) and kinds["loose"][1] is True  # rows by jacrev
    assert kinds["norm"] == ("affine", False) and kinds["ln"] == ("affine", False)
    assert kinds["shared"] == ("struct", False)


def test_forced_dense_rows_give_the_same_kernel() -> None:
    torch.manual_seed(1)
    model = build_model("efficientnet_lite0", 4, pretrained=False).double().eval()
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64)
    lin, features_in = _linear_part(model, "last-2", x[:2])
    z = features_in(x)
    fast = JacobianFactors(lin, z)
    slow = JacobianFactors(lin, z, dense=True)
    assert {b[0] for b in slow.blocks} == {"dense"} and "struct" in {b[0] for b in fast.blocks}
    assert _rel(tangent_kernel(fast), tangent_kernel(slow)) < TOL


def test_streamed_products_equal_the_factors() -> None:
    torch.manual_seed(2)
    model = build_model("efficientnet_lite0", 3, pretrained=False).double().eval()
    x = torch.rand(5, 3, 64, 64, dtype=torch.float64)
    lin, features_in = _linear_part(model, "last-2", x[:2])
    z = features_in(x)
    f = JacobianFactors(lin, z)
    s = StreamedJacobian(lin, z, batch_size=2)
    v = [torch.randn_like(d) for d in lin.delta]
    u = torch.randn(5, 3, dtype=torch.float64)
    assert _rel(s.jvp(v), f.jvp(v)) < TOL
    assert (
        _rel(torch.cat([t.reshape(-1) for t in s.vjp(u)]), torch.cat([t.reshape(-1) for t in f.vjp(u)])) < TOL
    )
    assert _rel(s.diagonal(), f.diagonal()) < TOL
    assert (
        _rel(torch.cat([t.reshape(-1) for t in s.normal(v)]), torch.cat([t.reshape(-1) for t in f.normal(v)]))
        < TOL
    )
    assert torch.allclose(s.outputs, f.outputs, atol=1e-12)


class _Tied(nn.Module):
    """A weight used by its module and again outside it (tied weights): the factors alone would
    miss the second use, so the first batch's check sends every row to jacrev."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.head(h @ self.enc.weight)


def test_a_weight_used_twice_is_caught_and_taken_from_jacrev() -> None:
    torch.manual_seed(0)
    model = _Tied().double().eval()
    lin = LinearizedModel(model, [n for n, _ in model.named_parameters()])
    x = torch.randn(5, 6, dtype=torch.float64)
    f = JacobianFactors(lin, x, batch_size=2)
    assert f.fallback_reason is not None and all(s.fallback for s in f.sites)
    assert _rel(f.dense(), jacobian(lin, x).reshape(-1, lin.num_linearized())) < TOL
    plain = LinearizedModel(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double(), ["0.weight"])
    assert JacobianFactors(plain, x).fallback_reason is None
