"""The linearized model against exact references: the network itself at dw = 0,
finite differences for J v, the dense Jacobian for J^T u, across architectures."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lqf.linearization import LeakyReLU6, LinearizedModel, swap_activations
from lqf.linearization.chain import module_chain, split_at
from lqf.linearization.jacobian import jacobian
from lqf.models import build_model, wrap_module


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def _convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=10)


# torchvision's architectures at small widths/depths (random weights): the same
# layer types as the full models, at a cost that suits the test suite
ARCHS = {
    "resnet": lambda: torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(width_mult=0.25, num_classes=10),
    "convnext": _convnext,
    "vit": _vit,
}


def _models():
    torch.manual_seed(0)
    out = {name: wrap_module(make(), 4) for name, make in ARCHS.items()}
    out["efficientnet_lite0"] = build_model("efficientnet_lite0", 4, pretrained=False)
    return out


def _generic_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters.

    At initialisation BatchNorm is the identity with zero shift, so zero-padded
    borders stay exactly zero through ReLU: pre-activations sit exactly on the
    kink, where finite differences and the (one-sided) derivative disagree.
    Pretrained networks are not in that degenerate position; random statistics
    emulate them.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {k: _generic_batchnorm(v.double().eval()) for k, v in _models().items()}


@pytest.mark.parametrize("arch", [*ARCHS, "efficientnet_lite0"])
def test_linearized_equals_network_at_w0_and_jvp_matches_finite_differences(models, arch: str) -> None:
    model = models[arch]
    torch.manual_seed(1)
    size = 32 if arch == "vit" else 16
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    lin = LinearizedModel(model, names)
    with torch.no_grad():
        ref = model(x)
        # f_lin at dw = 0 is the network (float64: equal to rounding)
        assert torch.allclose(lin(x), ref, rtol=0, atol=1e-10)
        v = [torch.randn_like(d) for d in lin.delta]
        jv = lin.jvp(x, v)
        # central differences in float64: truncation O(h^2), rounding about 1e-16 / h
        # relative. The step is tiny because a ReLU kink within h of an activation
        # makes the difference quotient differ from the one-sided derivative.
        h = 1e-8
        plus = torch.func.functional_call(
            model, {n: w + h * d for n, w, d in zip(names, lin.w0, v, strict=True)}, (x,)
        )
        minus = torch.func.functional_call(
            model, {n: w - h * d for n, w, d in zip(names, lin.w0, v, strict=True)}, (x,)
        )
        fd = (plus - minus) / (2 * h)
    err = float((jv - fd).abs().max() / fd.abs().max())
    assert err < 1e-5, (arch, err)


def test_vjp_is_the_transpose_of_jvp(models) -> None:
    """<J v, u> == <v, J^T u> (the adjoint identity), here on the ViT (math attention fallback)."""
    model = models["vit"]
    lin = LinearizedModel(model, [n for n, _ in model.named_parameters()])
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    v = [torch.randn_like(d) for d in lin.delta]
    u = torch.randn(3, 4, dtype=torch.float64)
    lhs = (lin.jvp(x, v) * u).sum()
    rhs = sum((a * b).sum() for a, b in zip(v, lin.vjp(x, u), strict=True))
    assert torch.allclose(lhs, rhs, rtol=1e-10)


def test_dense_jacobian_matches_jvp() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6))
    model = wrap_module(net, 3).double()
    x = torch.rand(5, 3, 6, 6, dtype=torch.float64)
    lin = LinearizedModel(model, [n for n, _ in model.named_parameters()])
    jac = jacobian(lin, x)  # (B, C, P)
    v = [torch.randn_like(d) for d in lin.delta]
    flat = torch.cat([t.reshape(-1) for t in v])
    assert torch.allclose(jac @ flat, lin.jvp(x, v), atol=1e-12)


def test_subset_linearization_keeps_the_rest_frozen() -> None:
    model = build_model("efficientnet_lite0", 3, pretrained=False).double().eval()
    names = [n for n, _ in model.named_parameters() if n.startswith(("features.conv_head", "head"))]
    lin = LinearizedModel(model, names)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    v = [torch.randn_like(d) for d in lin.delta]
    jac = jacobian(lin, x)
    assert jac.shape == (2, 3, sum(d.numel() for d in lin.delta))
    flat = torch.cat([t.reshape(-1) for t in v])
    assert torch.allclose(jac @ flat, lin.jvp(x, v), atol=1e-9)
    assert all(not p.requires_grad for p in model.parameters())


def test_chain_split_reproduces_the_model() -> None:
    model = build_model("efficientnet_lite0", 3, pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    links = [n for n, _ in module_chain(model)]
    prefix, suffix = split_at(model, "features.blocks.6.0", x)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), model(x), atol=1e-5)
    assert "features.global_pool" in links


def test_chain_split_refuses_models_that_are_not_chains() -> None:
    model = wrap_module(ARCHS["resnet"](), 3).eval()
    # a ResNet's children chain up to avgpool, then torch.flatten is functional
    assert split_at(model, "features.layer4", torch.rand(2, 3, 32, 32)) is None


def test_swap_activations_counts_and_slope_zero_with_clip_changes_nothing() -> None:
    model = build_model("efficientnet_lite0", 3, pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert swap_activations(model, 0.0, keep_clip=True) == 33
        assert torch.equal(model(x), ref)
    act = LeakyReLU6(0.1)
    t = torch.tensor([-10.0, -1.0, 0.0, 3.0, 7.0])
    assert torch.equal(act(t), torch.tensor([-1.0, -0.1, 0.0, 3.0, 6.0]))
