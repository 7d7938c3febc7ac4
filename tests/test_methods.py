"""Tests of the baseline methods against exact references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lqf.config import FitConfig
from lqf.errors import LqfError
from lqf.methods import FitContext, get_method, methods
from lqf.methods.finetune import FinetuneOptions, select_trainable
from lqf.methods.linear_probe import LinearProbeOptions, logistic
from lqf.models import build_model
from lqf.runs.fit import fit
from lqf.solvers.ridge import ridge_direct, ridge_path


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 30),
    d=st.integers(2, 25),
    c=st.integers(2, 5),
    lam=st.floats(1e-3, 1e2),
    seed=st.integers(0, 1000),
)
def test_ridge_svd_path_equals_dense_normal_equations(n: int, d: int, c: int, lam: float, seed: int) -> None:
    """The SVD path (fast) and the dense solve of (Phi^T Phi + lam I) W = Phi^T Y
    (exact twin) agree in float64 to 1e-8 relative, for N < D and N > D."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.randn(n, c, generator=g, dtype=torch.float64)
    ((w_fast, b_fast),) = ridge_path(phi, y, [lam])
    w_ref, b_ref = ridge_direct(phi, y, lam)
    torch.testing.assert_close(w_fast, w_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b_fast, b_ref, rtol=1e-8, atol=1e-10)


def test_ridge_gradient_vanishes_at_solution() -> None:
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(20, 8, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    ((w, b),) = ridge_path(phi, y, [0.5])
    residual = phi @ w + b - y
    # d/dW ||Phi W + 1 b^T - Y||^2 + lam ||W||^2 = 2 Phi^T r + 2 lam W ; d/db = 2 1^T r
    assert (phi.T @ residual + 0.5 * w).abs().max() < 1e-10
    assert residual.sum(0).abs().max() < 1e-10


def test_logistic_regression_reaches_a_stationary_point() -> None:
    """First-order optimality of the L2-regularised multinomial logistic loss
    (standardised features), checked with autograd at the returned solution."""
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(60, 5, generator=g, dtype=torch.float64) * 2 + 3
    labels = torch.randint(0, 3, (60,), generator=g)
    lam = 0.1
    w_raw, b_raw = logistic(phi, labels, 3, lam)
    m, s = phi.mean(0), phi.std(0)
    w = (w_raw * s.unsqueeze(1)).requires_grad_(True)  # back to standardised coordinates
    b = (b_raw + (m / s) @ w.detach()).requires_grad_(True)
    z = (phi - m) / s
    loss = nn.functional.cross_entropy(z @ w + b, labels) + 0.5 * lam * (w**2).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6
    # the raw-feature map gives the same logits as the standardised one
    torch.testing.assert_close(phi @ w_raw + b_raw, z @ w.detach() + b.detach())


def test_select_trainable_units() -> None:
    model = build_model("efficientnet_lite0", 5)
    assert select_trainable(model, "head") == ["head"]
    assert all(not p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    names = select_trainable(model, "last-2")
    assert names == ["features.conv_head", "features.bn2", "head"]
    assert model.features.conv_head.weight.requires_grad and not model.features.conv_stem.weight.requires_grad
    select_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(LqfError, match="only 20 units"):
        select_trainable(model, "last-99")


def test_options_are_validated() -> None:
    with pytest.raises(LqfError, match="--unfreeze"):
        FinetuneOptions(unfreeze="some")
    with pytest.raises(LqfError, match="--lr"):
        FinetuneOptions(lr=-1.0)
    with pytest.raises(LqfError, match="--ridge"):
        LinearProbeOptions(ridge=-1.0)
    with pytest.raises(LqfError, match="unknown method 'lqff'; valid: finetune, linear-probe, lqf"):
        get_method("lqff")
    assert {"finetune", "linear-probe"} <= set(methods())


def test_linear_probe_head_equals_ridge_on_features(tiny_model_spec: str) -> None:
    """The probe's head is the ridge solution on the cached features: the
    model's logits equal Phi W + b computed independently."""
    config = FitConfig(
        model=tiny_model_spec, data="digits", method="linear-probe", image_size=16, shots=10, val_per_class=5
    )
    result = fit(config, LinearProbeOptions(ridge=1e-2), quiet=True)
    from lqf.data import load_data
    from lqf.training.evaluate import apply

    data = load_data("digits", image_size=16, shots=10, val_per_class=5, seed=0)
    model = result.model
    phi = apply(model.embed, data.train).double()
    targets = nn.functional.one_hot(data.train.labels, 10).double()
    # mean non-zero eigenvalue of the centred Gram matrix, from its eigenvalues
    centred = phi - phi.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred)
    mean_eig = eigenvalues[eigenvalues > 1e-9 * eigenvalues.max()].mean().item()
    w, b = ridge_direct(phi, targets, 1e-2 * mean_eig)
    torch.testing.assert_close(model.head.weight.double(), w.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.head.bias.double(), b, rtol=1e-4, atol=1e-5)


def test_finetune_reduces_training_loss(tiny_model_spec: str) -> None:
    config = FitConfig(
        model=tiny_model_spec,
        data="digits",
        method="finetune",
        image_size=16,
        shots=20,
        val_per_class=5,
        epochs=10,
        batch_size=16,
    )
    result = fit(config, FinetuneOptions(lr=3e-2), quiet=True)
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 10 and losses[-1] < 0.7 * losses[0]
    assert result.metrics["test_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_frozen_batchnorm_keeps_running_statistics(tiny_model_spec: str) -> None:
    config = FitConfig(
        model=tiny_model_spec,
        data="digits",
        method="finetune",
        image_size=16,
        shots=5,
        val_per_class=0,
        epochs=1,
    )
    before = build_model(tiny_model_spec, 10).features[1].running_mean.clone()
    frozen = fit(config, FinetuneOptions(bn="frozen"), quiet=True).model
    trained = fit(config, FinetuneOptions(bn="train"), quiet=True).model
    assert torch.equal(frozen.features[1].running_mean, before)
    assert not torch.equal(trained.features[1].running_mean, before)


def test_context_generators_are_independent_of_global_rng() -> None:
    ctx = FitContext(config=FitConfig(seed=3))
    a = torch.rand(3, generator=ctx.generator(1))
    torch.manual_seed(123)
    b = torch.rand(3, generator=ctx.generator(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(3, generator=ctx.generator(2)))


def test_fine_tuning_defaults_to_the_recipe_measured_for_the_number_of_shots() -> None:
    """At most 10 images per class: --lr 3e-4 --bn frozen --head-lr-scale 10 (baseline*.md chose it
    on validation at 5 and 10 shots); more: --lr 1e-3 --bn train --head-lr-scale 1; given flags win."""
    from lqf.methods.finetune import resolve_recipe

    few, record = resolve_recipe(FinetuneOptions(), 10)
    assert (few.lr, few.bn, few.head_lr_scale, record["recipe"]) == (3e-4, "frozen", 10.0, "few-shot")
    many, record = resolve_recipe(FinetuneOptions(), 25)
    assert (many.lr, many.bn, many.head_lr_scale, record["recipe"]) == (1e-3, "train", 1.0, "standard")
    mine, _ = resolve_recipe(FinetuneOptions(lr=1e-2, bn="train"), 5)
    assert (mine.lr, mine.bn, mine.head_lr_scale) == (1e-2, "train", 10.0)
