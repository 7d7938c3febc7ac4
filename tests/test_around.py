"""LQF around a fine-tuned core: the core's record, linearizing around its weights, forgetting
outside it exactly (against solving again without the images) and refusing inside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lqf.explain import Explainer
from lqf.explain.runs import training_split
from lqf.runs import RunDirectory
from lqf.runs.fit import load_run

from .test_cli import assert_one_line_error, run_cli

SPLIT = ["--data", "digits", "--image-size", "16", "--shots", "8", "--val-per-class", "3", "--max-test", "40"]


def _fit(spec, out, capsys, *extra) -> None:
    code, _, err = run_cli(["fit", "--model", spec, *SPLIT, "--quiet", "--out", out, *extra], capsys)
    assert code == 0, err


@pytest.fixture(scope="module")
def core_run(tmp_path_factory, tiny_model_spec):
    """A fine-tuning run on half of the training images (fitted once for the module)."""
    from lqf.config import FitConfig
    from lqf.methods.finetune import FinetuneOptions
    from lqf.runs.fit import fit

    out = tmp_path_factory.mktemp("core") / "core"
    config = FitConfig(
        model=tiny_model_spec, data="digits", image_size=16, shots=8, val_per_class=3, max_test=40, epochs=2
    )
    fit(config, FinetuneOptions(core_fraction=0.5), out=str(out), quiet=True)
    return out


def test_the_core_is_a_seeded_stratified_half_recorded_in_core_json(core_run) -> None:
    core = json.loads((core_run / "core.json").read_text())
    metrics = json.loads((core_run / "metrics.json").read_text())
    assert core["n_train"] == 80 and len(core["positions"]) == 40 and metrics["n_train"] == 40
    config = load_run(str(core_run))[0]
    data, train, _, _ = training_split(RunDirectory.existing(str(core_run)), config)
    labels = np.asarray(train.labels)[core["positions"]]
    assert np.bincount(labels, minlength=10).tolist() == [4] * 10  # 4 of each class's 8


def test_lqf_around_the_core_starts_from_its_weights_and_forgets_outside_it_exactly(
    core_run, tmp_path, tiny_model_spec, capsys
) -> None:
    from lqf.explain.ridge import DualRidge
    from lqf.linearization.factors import JacobianFactors
    from lqf.training.evaluate import apply

    run = tmp_path / "around"
    _fit(tiny_model_spec, run, capsys, "--method", "lqf", "--linearize", "all", "--around", core_run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["around"] == str(core_run.resolve()) and metrics["n_train"] == 80
    assert "core's images" in metrics["head_init"]  # the head: the probe of the core's features
    # with --head-init random the linearization point is the fine-tuned network itself, head included
    kept = tmp_path / "kept-head"
    _fit(tiny_model_spec, kept, capsys, "--method", "lqf", "--around", core_run, "--head-init", "random")
    _, _, ft, _ = load_run(str(core_run))
    _, _, lqf_model, _ = load_run(str(kept))
    with torch.no_grad():
        for d in lqf_model.linear.delta:
            d.zero_()  # f_lin(x; w0 + 0) = f(x; w0)
        x = torch.rand(6, 3, 16, 16)
        torch.testing.assert_close(lqf_model(x), ft(x), rtol=1e-5, atol=1e-5)
    core = set(json.loads((run / "core.json").read_text())["positions"])
    outside = [i for i in range(80) if i not in core][:3]
    inline = ",".join(map(str, outside))  # a list on the command line, no file
    code, _, err = run_cli(["forget", run, "--indices", inline, "--out", tmp_path / "f"], capsys)
    assert code == 0, err
    # the forgotten model is the ridge optimum without those images around the same core
    ex = Explainer.from_run(str(run))
    keep = torch.ones(ex.n, dtype=torch.bool)
    keep[outside] = False
    z = apply(ex.model.features_in, ex.train.subset(keep), batch_size=64)
    want = DualRidge(JacobianFactors(ex.model.linear, z), ex.targets[keep], ex.view.mu).delta()
    _, _, forgotten, _ = load_run(str(tmp_path / "f"))
    got = torch.cat([d.detach().reshape(-1).double() for d in forgotten.linear.delta])
    want = torch.cat([d.reshape(-1) for d in want])
    assert float((got - want).norm() / want.norm()) < 1e-4  # float32 factors on both sides
    # an image of the core is refused, in one line that says why and how
    inside = sorted(core)[:1]
    (tmp_path / "in.txt").write_text(f"{inside[0]}\n")
    code, _, err = run_cli(["forget", run, "--indices", tmp_path / "in.txt", "--out", tmp_path / "g"], capsys)
    assert_one_line_error(code, err, "in the core", "fine-tun", "--around")
    assert not (tmp_path / "g").exists()


def test_around_fit_rest_fits_only_the_images_outside_the_core(core_run, tmp_path, tiny_model_spec, capsys):
    run = tmp_path / "rest"
    _fit(tiny_model_spec, run, capsys, "--method", "lqf", "--around", core_run, "--around-fit", "rest")
    assert json.loads((run / "metrics.json").read_text())["n_train"] == 40
    _, train, _, positions = training_split(RunDirectory.existing(str(run)), load_run(str(run))[0])
    core = set(json.loads((core_run / "core.json").read_text())["positions"])
    assert len(train) == 40 and not core & set(positions)
    assert Explainer.from_run(str(run)).n == 40


def test_around_refuses_what_it_cannot_linearize_around(core_run, tmp_path, tiny_model_spec, capsys) -> None:
    probe = tmp_path / "probe"
    _fit(tiny_model_spec, probe, capsys, "--method", "linear-probe")
    cases = [
        (["--around", probe], ["fine-tuning run", "linear-probe"]),
        (["--around", tmp_path / "nothing"], ["not a run directory"]),
        (["--around", core_run, "--seed", "1"], ["another split", "--seed 0"]),
        (["--around", core_run, "--model", "efficientnet_lite0"], ["fine-tuned file:"]),
        (["--around-fit", "rest"], ["needs --around"]),
    ]
    for k, (extra, fragments) in enumerate(cases):
        out = tmp_path / f"bad{k}"
        args = ["fit", "--model", tiny_model_spec, *SPLIT, "--quiet", "--method", "lqf", "--out", out, *extra]
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, *fragments)
        assert not out.exists() or not any(out.iterdir()), extra
    code, _, err = run_cli(["fit", "--model", tiny_model_spec, *SPLIT, "--core-fraction", "1.5"], capsys)
    assert_one_line_error(code, err, "--core-fraction must be in (0, 1]")
