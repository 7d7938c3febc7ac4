"""Fixed classifier heads: the fast transform against scipy's dense Hadamard
matrix, the orthogonality claims, state dicts, RNG hygiene, dtypes and the probe."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lqf.errors import LqfError
from lqf.heads import FixedClassifier, compact_state_dict, default_scale, make_head
from lqf.heads.factory import head_from_spec, head_spec
from lqf.heads.hadamard import fwht, hadamard_project, next_pow2, sylvester, truncated_hadamard
from lqf.heads.orthogonal import random_orthogonal
from lqf.heads.probe import fit_fixed_head, scale_bias_logistic, scale_bias_ridge

from .conftest import DEVICES

#: float64 fast vs dense: both are sums of the same +-x_j, in different orders
TOL64 = dict(rtol=1e-12, atol=1e-12)


def scipy_block(rows: slice, d: int) -> torch.Tensor:
    """``scipy.linalg.hadamard(n)[rows, :d]`` with ``n`` the next power of two >= max(d, rows.stop)."""
    n = next_pow2(max(d, rows.stop))
    return torch.from_numpy(scipy.linalg.hadamard(n)[rows, :d].astype(np.float64))


def reference_logits(head: FixedClassifier, x: torch.Tensor) -> torch.Tensor:
    """``alpha H z / sqrt(d) + b`` (Hadamard) or ``alpha W z + b`` with the dense matrix, float64."""
    x = x.double()
    z = x / x.norm(dim=-1, keepdim=True)
    if head.kind == "hadamard":
        w = scipy_block(slice(head.row_offset, head.row_offset + head.out_features), head.in_features)
        w = w / math.sqrt(head.in_features)
    else:
        w = random_orthogonal(head.out_features, head.in_features, head.seed)
    return head.scale.detach().double() * (z @ w.T) + head.bias.detach().double()


# -- the transform ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 64, 1024])
def test_sylvester_and_fwht_equal_scipy(n: int) -> None:
    h = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    assert torch.equal(sylvester(n, torch.float64), h)
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ h, **TOL64)


@settings(max_examples=150, deadline=None)
@given(d=st.integers(1, 300), c=st.integers(1, 300), offset=st.integers(0, 2))
def test_truncated_hadamard_and_fast_product_equal_scipy(d: int, c: int, offset: int) -> None:
    h = scipy_block(slice(offset, offset + c), d)
    assert torch.equal(truncated_hadamard(c, d, torch.float64, offset=offset), h)
    x = torch.randn(2, 3, d, dtype=torch.float64)
    torch.testing.assert_close(hadamard_project(x, c, offset=offset), x @ h.T, **TOL64)


@pytest.mark.parametrize("d, c", [(1280, 10), (1280, 1000), (1280, 2048), (100, 3000), (513, 7), (7, 513)])
def test_fast_product_large_shapes(d: int, c: int) -> None:
    x = torch.randn(4, d, dtype=torch.float64)
    torch.testing.assert_close(hadamard_project(x, c), x @ scipy_block(slice(0, c), d).T, **TOL64)
    # float32: the error of a sum of d terms of size |x_j|
    x32 = x.float()
    err = (hadamard_project(x32, c).double() - x @ scipy_block(slice(0, c), d).T).abs().max()
    assert err <= 1e-6 * x.abs().sum(-1).max()


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 200), c=st.integers(1, 200), path=st.sampled_from(["fast", "dense"]))
def test_hadamard_head_equals_dense_reference(d: int, c: int, path: str) -> None:
    head = FixedClassifier(d, c, "hadamard", path=path).double()
    with torch.no_grad():
        head.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(d * 1000 + c))
    x = torch.randn(5, d, dtype=torch.float64)
    torch.testing.assert_close(head(x), reference_logits(head, x), **TOL64)
    torch.testing.assert_close(head.project(x) * head.scale + head.bias, head(x), **TOL64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d, c", [(16, 40), (16, 100), (1280, 10), (64, 64)])
def test_fast_and_dense_paths_agree_with_gradients(d: int, c: int, device: str) -> None:
    fast, dense = (FixedClassifier(d, c, path=p).double().to(device) for p in ("fast", "dense"))
    dense.load_state_dict(fast.state_dict())
    x = torch.randn(6, d, dtype=torch.float64, device=device)
    xf, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(6, c, dtype=torch.float64, device=device)
    (fast(xf) * weights).sum().backward()
    (dense(xd) * weights).sum().backward()
    torch.testing.assert_close(xf.grad, xd.grad, **TOL64)
    torch.testing.assert_close(fast.scale.grad, dense.scale.grad, **TOL64)
    torch.testing.assert_close(fast.bias.grad, dense.bias.grad, **TOL64)


# -- orthogonality ------------------------------------------------------------------------
@pytest.mark.parametrize("d, c, offset", [(1280, 10, 1), (64, 63, 1), (96, 32, 0), (48, 15, 1)])
def test_hadamard_rows_orthonormal_when_period_divides_d(d: int, c: int, offset: int) -> None:
    assert d % next_pow2(offset + c) == 0
    w = FixedClassifier(d, c, row_offset=offset).dense_matrix()
    torch.testing.assert_close(w @ w.T, torch.eye(c, dtype=torch.float64), **TOL64)


def test_hadamard_columns_orthogonal_when_period_divides_c() -> None:
    d, c = 24, 64  # p2(d) = 32 divides C
    w = truncated_hadamard(c, d, torch.float64)
    torch.testing.assert_close(w.T @ w, c * torch.eye(d, dtype=torch.float64), **TOL64)


def test_hadamard_columns_without_the_constant_row() -> None:
    d, c = 24, 63  # rows 1..63 of H_64: the full column sums minus row 0
    w = truncated_hadamard(c, d, torch.float64, offset=1)
    expected = 64 * torch.eye(d, dtype=torch.float64) - torch.ones(d, d, dtype=torch.float64)
    torch.testing.assert_close(w.T @ w, expected, **TOL64)


def test_hadamard_rows_not_orthogonal_in_general() -> None:
    w = truncated_hadamard(1000, 1280, torch.float64)  # p2(1000) = 1024 does not divide 1280
    off = w @ w.T - 1280 * torch.eye(1000, dtype=torch.float64)
    assert off.abs().max() > 0


@pytest.mark.parametrize("d, c", [(50, 10), (10, 50), (33, 33)])
def test_orthogonal_matrix(d: int, c: int) -> None:
    w = FixedClassifier(d, c, "orthogonal", seed=3).dense_matrix()
    if c <= d:
        torch.testing.assert_close(w @ w.T, torch.eye(c, dtype=torch.float64))
    else:
        torch.testing.assert_close(w.T @ w, (c / d) * torch.eye(d, dtype=torch.float64))
    other = FixedClassifier(d, c, "orthogonal", seed=4).dense_matrix()
    assert not torch.allclose(w, other)
    assert torch.equal(w, FixedClassifier(d, c, "orthogonal", seed=3).dense_matrix())


# -- parameters, dtypes, devices ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
def test_only_scale_and_bias_are_parameters(kind: str) -> None:
    head = FixedClassifier(40, 7, kind)
    params = dict(head.named_parameters())
    assert list(params) == ["scale", "bias"]
    assert params["scale"].shape == () and params["bias"].shape == (7,)
    assert sum(p.numel() for p in head.parameters()) == 8
    assert head.scale.item() == pytest.approx(math.log(99 * 6))
    assert default_scale(2) == pytest.approx(math.log(99))


@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
def test_to_dtype_moves_the_buffer(kind: str) -> None:
    head = FixedClassifier(20, 6, kind, path="dense")
    assert head.matrix.dtype == torch.float32
    head.to(torch.float64)
    assert head.matrix.dtype == torch.float64 and head.scale.dtype == torch.float64
    x = torch.randn(3, 20, dtype=torch.float64)
    out = head(x)
    assert out.dtype == torch.float64
    tol = TOL64 if kind == "hadamard" else dict(rtol=1e-6, atol=1e-6)  # orthogonal: float32-rounded
    torch.testing.assert_close(out, reference_logits(head, x), **tol)


def test_fast_head_holds_no_matrix() -> None:
    head = FixedClassifier(1280, 100_000, path="fast")
    assert head.matrix is None
    assert set(head.state_dict()) == {"scale", "bias"}
    assert sum(b.numel() for b in head.buffers()) == 0


# -- state dicts ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, path", [("hadamard", "dense"), ("hadamard", "fast"), ("orthogonal", "auto")])
def test_state_dict_round_trips(kind: str, path: str) -> None:
    x = torch.randn(4, 30)
    head = FixedClassifier(30, 9, kind, seed=5, path=path)
    with torch.no_grad():
        head.scale.fill_(3.5)
        head.bias.normal_(generator=torch.Generator().manual_seed(0))
    full = head.state_dict()
    compact = compact_state_dict(head)
    assert set(compact) == {"scale", "bias"}
    assert ("matrix" in full) == (head.matrix is not None)
    for saved in (full, compact):
        for compact_target in (False, True):
            fresh = FixedClassifier(30, 9, kind, seed=5, path=path, compact=compact_target)
            fresh.load_state_dict(saved)  # strict
            torch.testing.assert_close(fresh(x), head(x), rtol=0, atol=0)
    built_compact = FixedClassifier(30, 9, kind, seed=5, path=path, compact=True)
    assert set(built_compact.state_dict()) == {"scale", "bias"}


def test_compact_state_dict_of_a_model() -> None:
    model = nn.Sequential(nn.Linear(8, 12), FixedClassifier(12, 5, "orthogonal", seed=1))
    full, compact = model.state_dict(), compact_state_dict(model)
    assert set(full) - set(compact) == {"1.matrix"}
    fresh = nn.Sequential(nn.Linear(8, 12), FixedClassifier(12, 5, "orthogonal", seed=1))
    fresh.load_state_dict(compact)
    torch.testing.assert_close(fresh[1].matrix, model[1].matrix, rtol=0, atol=0)


def test_a_stored_matrix_from_another_seed_is_refused() -> None:
    saved = FixedClassifier(30, 9, "orthogonal", seed=1).state_dict()
    with pytest.raises(RuntimeError, match="differs from the orthogonal matrix"):
        FixedClassifier(30, 9, "orthogonal", seed=2).load_state_dict(saved)


# -- randomness ---------------------------------------------------------------------------------
def test_global_rng_states_are_untouched() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    for kind in ("hadamard", "orthogonal"):
        for c in (5, 60):
            head = FixedClassifier(40, c, kind, seed=7)
            head(torch.ones(2, 40))
            FixedClassifier(40, c, kind, seed=7).load_state_dict(compact_state_dict(head))
            make_head(f"fixed-{kind}", 40, c, seed=7)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]


# -- factory ------------------------------------------------------------------------------------
def test_make_head_and_spec_round_trip() -> None:
    head = make_head("fixed-orthogonal", 16, 4, seed=3)
    rebuilt = head_from_spec(head_spec(head))
    assert isinstance(rebuilt, FixedClassifier) and rebuilt.kind == "orthogonal" and rebuilt.seed == 3
    assert head_from_spec(head_spec(nn.Linear(3, 2))) is None
    with pytest.raises(LqfError, match="repeats rows"):
        make_head("fixed-hadamard", 16, 17)
    with pytest.raises(LqfError, match="unknown fixed head"):
        make_head("hadamard", 16, 4)
    from lqf.config import HEADS
    from lqf.heads import HEAD_CHOICES

    assert HEADS == HEAD_CHOICES


# -- the probe of a fixed head -------------------------------------------------------------------
def test_scale_bias_ridge_equals_least_squares() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    y = nn.functional.one_hot(torch.randint(0, 4, (50,), generator=gen), 4).double()
    # unknowns [alpha, b_1..b_C]: the column for alpha is vec(G), for b_c the indicator of class c
    design = torch.cat([g.reshape(-1, 1), torch.eye(4, dtype=torch.float64).repeat(50, 1)], dim=1)
    solution = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution.squeeze(1)
    (alpha, b), (alpha_pen, _) = scale_bias_ridge(g, y, [0.0, 1.0])
    assert alpha == pytest.approx(float(solution[0]), rel=1e-10)
    torch.testing.assert_close(b, solution[1:], rtol=1e-10, atol=1e-10)
    assert alpha_pen == pytest.approx(alpha / 2)


def test_scale_bias_logistic_is_stationary() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (60,), generator=gen)
    g = torch.randn(60, 3, generator=gen, dtype=torch.float64) + nn.functional.one_hot(labels, 3)
    alpha, b = scale_bias_logistic(g, labels, lam=0.01)
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    bb = b.clone().requires_grad_()
    loss = nn.functional.cross_entropy(a * g + bb, labels) + 0.005 * a**2
    loss.backward()
    assert abs(float(a.grad)) < 1e-6 and float(bb.grad.abs().max()) < 1e-6
    assert alpha > 0


def test_fit_fixed_head_changes_only_scale_and_bias() -> None:
    gen = torch.Generator().manual_seed(2)
    head = FixedClassifier(16, 3, "orthogonal")
    matrix = head.matrix.clone()
    rows = head.dense_matrix(torch.float32)
    labels = torch.randint(0, 3, (90,), generator=gen)
    feats = rows[labels] + 0.3 * torch.randn(90, 16, generator=gen)  # features near their class's row
    train, val = (feats[:60], labels[:60]), (feats[60:], labels[60:])
    extra, record = fit_fixed_head(head, *train, *val, "ridge", [0.0, 1.0])
    assert torch.equal(head.matrix, matrix)
    assert record["val_accuracy"] > 0.9 and head.scale.item() > 0
    assert extra["head_scale"] == pytest.approx(head.scale.item())


def test_fwht_with_and_without_autograd_agree_and_leave_the_input_alone() -> None:
    x = torch.randn(3, 5, 64, dtype=torch.float64)
    kept = x.clone()
    plain = fwht(x)
    assert torch.equal(x, kept)
    tracked = fwht(x.clone().requires_grad_())
    assert tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=0)
    torch.testing.assert_close(fwht(plain), 64 * x, **TOL64)  # H_k H_k = k I
