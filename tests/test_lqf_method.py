"""``--method lqf`` end to end on the tiny network: fit, reload, evaluate, ablation switches."""

from __future__ import annotations

import json

import pytest
import torch

from lqf.config import FitConfig
from lqf.errors import LqfError
from lqf.methods.lqf import LQFOptions, select_linearized
from lqf.models import build_model
from lqf.runs.fit import fit, load_run

from .test_cli import assert_one_line_error, run_cli


def _config(spec: str, **kw) -> FitConfig:
    base = dict(model=spec, data="digits", method="lqf", image_size=16, shots=6, val_per_class=4, max_test=60)
    return FitConfig(**{**base, **kw})


@pytest.mark.parametrize("solver", ["kernel", "cg"])
def test_lqf_fit_saves_a_model_that_reloads_to_the_same_outputs(tiny_model_spec, tmp_path, solver) -> None:
    out = tmp_path / solver
    options = LQFOptions(solver=solver, linearize="all", leaky_slope=0.1, lqf_ridge=0.1, max_iter=100)
    result = fit(_config(tiny_model_spec), options, out=str(out), quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["solver"] == solver and metrics["activations_swapped"] == 2
    assert 0 <= metrics["test_accuracy"] <= 1
    _, _, model, info = load_run(str(out))
    assert info["method_model"]["linearize"] == "all"
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-5)


def test_kernel_and_cg_choose_the_same_model(tiny_model_spec) -> None:
    """Same problem, same ridge: the exact kernel solution and CG (float32, tol 1e-5) agree to 1e-3."""
    runs = {}
    for solver in ("kernel", "cg"):
        options = LQFOptions(solver=solver, linearize="last-1", lqf_ridge=1e-2, tol=1e-5, max_iter=2000)
        runs[solver] = fit(_config(tiny_model_spec), options, quiet=True).model
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        a, b = runs["kernel"](x), runs["cg"](x)
    assert (a - b).abs().max() < 1e-3 * a.abs().max()


def test_sgd_route_with_ablation_switches_runs(tiny_model_spec, tmp_path) -> None:
    for loss, pre in (("mse", "kfac"), ("ce", "none")):
        options = LQFOptions(solver="sgd", lqf_loss=loss, preconditioner=pre, linearize="last-1")
        result = fit(_config(tiny_model_spec, epochs=2), options, out=str(tmp_path / loss), quiet=True)
        assert result.metrics["epochs_run"] == 2
        assert result.metrics["preconditioner"] == pre


def test_sgd_route_keeps_the_frozen_prefix_in_eval_mode(tiny_model_spec) -> None:
    """BatchNorm below the linearized part must keep its running statistics (and use them)."""
    options = LQFOptions(solver="sgd", linearize="last-1", lqf_lr=1e-3)
    result = fit(_config(tiny_model_spec, epochs=2), options, quiet=True)
    original = torch.load(tiny_model_spec.removeprefix("file:"), weights_only=False)
    prefix_bn = [m for m in result.model.prefix.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert prefix_bn, "the test needs BatchNorm in the frozen prefix"
    before = [m for m in original.modules() if isinstance(m, torch.nn.BatchNorm2d)][: len(prefix_bn)]
    for a, b in zip(prefix_bn, before, strict=True):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


def test_sgd_route_stops_with_one_line_when_it_diverges(tiny_model_spec, tmp_path, capsys) -> None:
    """A far too large step makes the convex loss explode: a clear error naming --lqf-lr, no garbage model."""
    out = tmp_path / "diverged"
    code, _, err = run_cli(
        ["fit", "--model", tiny_model_spec, "--data", "digits", "--image-size", "16", "--shots", "6"]
        + ["--val-per-class", "4", "--max-test", "60", "--method", "lqf", "--solver", "sgd"]
        + ["--linearize", "last-1", "--lqf-lr", "1e6", "--epochs", "5", "--quiet", "--out", str(out)],
        capsys,
    )
    assert_one_line_error(code, err, "diverging", "--lqf-lr")
    assert not (out / "metrics.json").exists()


def test_linearized_subsets() -> None:
    model = build_model("efficientnet_lite0", 3, pretrained=False)
    last = select_linearized(model, "last-2")
    assert last[0].startswith("features.conv_head") and last[-1] == "head.bias"
    assert select_linearized(model, "head") == ["head.weight", "head.bias"]
    assert select_linearized(model, "features.blocks.6.*") == [
        n for n, _ in model.named_parameters() if n.startswith("features.blocks.6.")
    ]
    with pytest.raises(LqfError, match="matches no parameter"):
        select_linearized(model, "nothing.*")


def test_bad_lqf_options_give_one_line(tiny_model_spec, tmp_path, capsys) -> None:
    base = ["fit", "--model", tiny_model_spec, "--data", "digits", "--method", "lqf", "--quiet"]
    code, _, err = run_cli([*base, "--leaky-slope", "1.5"], capsys)
    assert_one_line_error(code, err, "--leaky-slope")
    code, _, err = run_cli([*base, "--lqf-loss", "ce", "--solver", "cg"], capsys)
    assert_one_line_error(code, err, "--solver sgd")
    code, _, err = run_cli([*base, "--linearize", "nope.*", "--out", tmp_path / "x"], capsys)
    assert_one_line_error(code, err, "matches no parameter")
    code, _, err = run_cli([*base, "--relinearize", "-1"], capsys)
    assert_one_line_error(code, err, "--relinearize must be >= 0")
    code, _, err = run_cli([*base, "--kernel-memory-mb", "0"], capsys)
    assert_one_line_error(code, err, "--kernel-memory-mb must be > 0")
    code, _, err = run_cli([*base, "--kernel-memory-mb", "1e12"], capsys)
    assert_one_line_error(code, err, "more than this machine's", "MiB of memory")
    for flag, value in (("--tol", "0"), ("--max-iter", "0")):
        code, _, err = run_cli([*base, flag, value], capsys)
        assert_one_line_error(code, err, f"{flag} must be")


def test_a_route_that_cannot_fit_says_so_before_solving_and_leaves_nothing(tiny_model_spec, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fit", "--model", tiny_model_spec, "--data", "digits", "--method", "lqf", "--quiet", "--out", out]
    code, _, err = run_cli(
        [*args, "--image-size", "16", "--solver", "kernel", "--kernel-memory-mb", "0.01"], capsys
    )
    assert_one_line_error(
        code, err, "kernel route needs about", "rows", "--solver cg", "--shots", "--linearize"
    )
    assert not out.exists()  # nothing written: the same --out works again
    code, _, err = run_cli([*args, "--image-size", "16", "--shots", "4"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["solver"] == "kernel" and metrics["solver_plan"]["reason"].startswith(
        "auto: predicted kernel"
    )
    assert metrics["notes"][0].startswith("solver kernel: auto")


def test_repair_reduces_the_distillation_loss() -> None:
    """After a Leaky-ReLU swap, distillation brings the unit outputs back towards the original's."""
    import copy

    from lqf.linearization import swap_activations
    from lqf.linearization.repair import distill
    from lqf.models import wrap_module

    from .conftest import tiny_net

    original = wrap_module(tiny_net(), 4).eval()
    swapped = copy.deepcopy(original)
    assert swap_activations(swapped, 0.3) == 2
    images = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    losses = distill(
        swapped,
        original,
        images,
        steps=100,
        lr=1e-2,
        params="all",
        generator=torch.Generator().manual_seed(1),
    )
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_lqf_with_a_fixed_head_linearizes_scale_and_bias_not_the_matrix(tiny_model_spec, tmp_path) -> None:
    out = tmp_path / "fixed"
    options = LQFOptions(solver="kernel", linearize="head", lqf_ridge=0.1)
    result = fit(_config(tiny_model_spec, head="fixed-orthogonal"), options, out=str(out), quiet=True)
    lin = result.model.linear
    head_names = list(lin.names)
    assert len(head_names) == 2 and all(n.endswith(("scale", "bias")) for n in head_names), head_names
    _, _, model, _ = load_run(str(out))
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-5)


def test_relinearize_takes_ridge_steps_from_the_last_solution(tiny_model_spec) -> None:
    """Head only, linear head: ``f`` is linear in the head, so each solve is one ridge step from the
    last solution, ``(Phi^T Phi / N + lam I) d_k = Phi^T (T - Phi theta_k) / N`` with ``Phi`` the
    features and a ones column; checked against a dense float64 solve (relative 1e-4)."""
    from lqf.data import load_data

    config = _config(tiny_model_spec)
    one = fit(config, LQFOptions(solver="kernel", linearize="head", lqf_ridge=0.1), quiet=True)
    two = fit(config, LQFOptions(solver="kernel", linearize="head", lqf_ridge=0.1, relinearize=1), quiet=True)
    first = one.model.linear.nonlinear_weights()
    a, b = two.model.linear, one.model.linear
    assert [n for n in a.names] == [n for n in b.names] and len(a.names) == 2
    for w, name in zip(a.w0, a.names, strict=True):  # the second solve starts where the first ended
        torch.testing.assert_close(w, first[name], rtol=1e-5, atol=1e-6)
    assert [s["ridge_relative"] for s in two.metrics["relinearize_steps"]] == [0.1, 0.1]
    assert two.metrics["ridge_scale"] == one.metrics["ridge_scale"]  # J does not depend on the head
    data = load_data(config.data, image_size=16, shots=6, val_per_class=4, seed=config.seed, max_test=60)
    x = torch.cat([xb for xb, _ in data.train.batches(64)])
    phi = torch.cat([two.model.features_in(x), torch.ones(len(x), 1)], 1).double()
    n, c = len(x), two.model.num_classes
    targets = torch.nn.functional.one_hot(data.train.labels, c).double()
    names = dict(zip(a.names, a.w0, strict=True))
    weight = next(k for k in names if k.endswith("weight"))
    bias = next(k for k in names if k.endswith("bias"))
    theta = torch.cat([names[weight].T, names[bias][None]], 0).double()  # (d + 1, C)
    lam = two.metrics["ridge_scale"] * 0.1
    hessian = phi.T @ phi / n + lam * torch.eye(phi.shape[1], dtype=torch.float64)
    step = torch.linalg.solve(hessian, phi.T @ (targets - phi @ theta) / n)
    delta = dict(zip(a.names, a.delta, strict=True))
    got = torch.cat([delta[weight].T, delta[bias][None]], 0).double()
    assert step.abs().max() > 1e-4  # a real step: the ridge held the first solve back
    torch.testing.assert_close(got, step, rtol=1e-4, atol=1e-4 * step.abs().max().item())
