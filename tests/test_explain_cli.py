"""``lqf explain`` and ``lqf forget`` end to end on the tiny network, and their bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lqf.explain import Explainer
from lqf.explain.runs import training_split
from lqf.runs import RunDirectory
from lqf.runs.fit import load_run

from .test_cli import assert_one_line_error, run_cli


def _fit(tmp_path, spec, capsys, method="lqf", *extra):
    out = tmp_path / method
    args = [
        "fit",
        "--model",
        spec,
        "--data",
        "digits",
        "--method",
        method,
        "--image-size",
        "16",
        "--shots",
        "6",
    ]
    args += ["--val-per-class", "3", "--max-test", "40", "--quiet", "--out", out, *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_spec):
    """An LQF run and a probe run (fitted once for the module)."""
    tmp = tmp_path_factory.mktemp("explain")
    from lqf.config import FitConfig
    from lqf.methods.linear_probe import LinearProbeOptions
    from lqf.methods.lqf import LQFOptions
    from lqf.runs.fit import fit

    base = dict(model=tiny_model_spec, data="digits", image_size=16, shots=6, val_per_class=3, max_test=40)
    out = {}
    for method, options in (("lqf", LQFOptions(linearize="all")), ("linear-probe", LinearProbeOptions())):
        path = tmp / method
        fit(FitConfig(method=method, **base), options, out=str(path), quiet=True)
        out[method] = path
    return out


@pytest.mark.parametrize("method", ["lqf", "linear-probe"])
def test_explain_writes_reports_and_forget_writes_a_working_run(runs, tmp_path, capsys, method) -> None:
    run = runs[method]
    code, out, err = run_cli(["explain", run, "--test-index", "3", "--mislabels", "--top", "4"], capsys)
    assert code == 0, err
    folder = run / "explain"
    report = json.loads((folder / "influence-test3.json").read_text())
    assert len(report["helpful"]) == 4 and len(report["harmful"]) == 4
    assert report["helpful"][0]["influence"] >= report["harmful"][0]["influence"]
    assert (folder / "influence-test3.png").stat().st_size > 1000
    rows = list(csv.DictReader((folder / "mislabels.csv").open()))
    assert len(rows) == 60 and float(rows[0]["score"]) >= float(rows[-1]["score"])
    assert "leave-one-out accuracy" in out
    # the run's own weights are the exact ridge optimum the answers describe
    assert Explainer.from_run(str(run)).consistency < 1e-4

    (tmp_path / "forget.txt").write_text("# suspects\n3\n17, 40\n")
    new = tmp_path / "clean"
    code, out, err = run_cli(["forget", run, "--indices", tmp_path / "forget.txt", "--out", new], capsys)
    assert code == 0, err
    metrics = json.loads((new / "metrics.json").read_text())
    assert metrics["n_train"] == 57 and metrics["forgotten"] == 3
    assert json.loads((new / "forget.json").read_text())["removed"] == [3, 17, 40]
    code, _, err = run_cli(["evaluate", new, "--quiet"], capsys)
    assert code == 0, err
    # the forgotten run explains itself on its 57 images, and can be forgotten again
    code, _, err = run_cli(["explain", new, "--mislabels"], capsys)
    assert code == 0, err
    (tmp_path / "again.txt").write_text("0\n")
    code, _, err = run_cli(
        ["forget", new, "--indices", tmp_path / "again.txt", "--out", tmp_path / "twice"], capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "twice" / "forget.json").read_text())["removed"] == [0, 3, 17, 40]


def test_forgetting_equals_retraining_on_the_remaining_images(runs, tmp_path, capsys) -> None:
    """The forgotten LQF model predicts like one solved from scratch without those images
    (same linearization point and penalty)."""
    from lqf.explain.ridge import DualRidge
    from lqf.linearization.factors import JacobianFactors
    from lqf.training.evaluate import apply

    run = runs["lqf"]
    ex = Explainer.from_run(str(run))
    model = ex.forget([1, 2, 30])
    keep = torch.ones(ex.n, dtype=torch.bool)
    keep[[1, 2, 30]] = False
    z = apply(ex.model.features_in, ex.train.subset(keep), batch_size=64)
    mu = ex.view.mu  # the penalty of the summed objective is kept
    fresh = DualRidge(JacobianFactors(ex.model.linear, z), ex.targets[keep], mu)
    want = torch.cat([d.reshape(-1) for d in fresh.delta()])
    got = torch.cat([d.detach().reshape(-1).double() for d in model.linear.delta])
    assert float((got - want).norm() / want.norm()) < 1e-4  # float32 factors on both sides


def test_explain_and_forget_refuse_bad_input_with_one_line(runs, tmp_path, tiny_model_spec, capsys) -> None:
    ft = _fit(tmp_path, tiny_model_spec, capsys, "finetune", "--epochs", "1")
    code, _, err = run_cli(["explain", ft], capsys)
    assert_one_line_error(code, err, "ridge regression", "--method lqf", "finetune")
    lqf = runs["lqf"]
    code, _, err = run_cli(["explain", lqf, "--test-index", "400"], capsys)
    assert_one_line_error(code, err, "--test-index 400 is out of range")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = run_cli(["explain", lqf, "--image", tmp_path / "bad.png"], capsys)
    assert_one_line_error(code, err, "cannot read image")
    code, _, err = run_cli(["explain", lqf, "--image", tmp_path / "missing.png"], capsys)
    assert_one_line_error(code, err, "does not exist")
    cases = {
        "7\n7\n": "given twice",
        "99999\n": "out of range",
        "three\n": "not a whole number",
        "": "holds no index",
        "\n".join(str(i) for i in range(60)) + "\n": "every training image",
    }
    _, train, _, _ = training_split(RunDirectory.existing(str(lqf)), load_run(str(lqf))[0])
    ones = [str(i) for i in range(len(train)) if int(train.labels[i]) == 0]
    cases["\n".join(ones) + "\n"] = "every training image of class"
    for k, (text, fragment) in enumerate(cases.items()):
        path = tmp_path / f"idx{k}.txt"
        path.write_text(text)
        out = tmp_path / f"out{k}"
        code, _, err = run_cli(["forget", lqf, "--indices", path, "--out", out], capsys)
        assert_one_line_error(code, err, fragment)
        assert not out.exists()  # nothing written
    code, _, err = run_cli(
        ["forget", lqf, "--indices", tmp_path / "nope.txt", "--out", tmp_path / "o"], capsys
    )
    assert_one_line_error(code, err, "does not exist")
    (tmp_path / "ok.txt").write_text("1\n")
    code, _, err = run_cli(
        ["forget", lqf, "--indices", tmp_path / "ok.txt", "--out", runs["linear-probe"]], capsys
    )
    assert_one_line_error(code, err, "already holds a run")


def test_explain_an_image_file(runs, tmp_path, capsys) -> None:
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "seven.png")
    code, out, err = run_cli(
        ["explain", runs["linear-probe"], "--image", tmp_path / "seven.png", "--out", tmp_path / "r"], capsys
    )
    assert code == 0, err
    assert (tmp_path / "r" / "influence-seven.json").exists() and "predicted" in out


@pytest.mark.parametrize("method", ["lqf", "linear-probe"])
def test_a_run_gives_scores_with_their_variance_and_calibrated_probabilities(runs, method) -> None:
    from lqf.explain.uncertainty import fit_calibration

    ex = Explainer.from_run(str(runs[method]))
    data, train, _, _ = training_split(RunDirectory.existing(str(runs[method])), ex.config)
    images = torch.cat([x for x, _ in data.val.batches(64)])
    mean, var = ex.predict_with_variance(images)
    assert mean.shape == var.shape == (len(data.val), 10) and bool((var >= 0).all())
    torch.testing.assert_close(mean, ex.predict(images))
    # a training image is better known than a test image far from the data
    far = torch.rand(1, 3, 16, 16)
    near = torch.cat([x for x, _ in train.batches(1)][:1])
    assert float(ex.predict_with_variance(near)[1].mean()) < float(ex.predict_with_variance(far)[1].mean())
    cal = fit_calibration(mean, var, data.val.labels)
    p = cal(mean, var)
    assert torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype)) and cal.temperature > 0


@pytest.mark.parametrize("method", ["lqf", "linear-probe"])
def test_predict_gives_calibrated_probabilities_with_their_spread(runs, tmp_path, capsys, method) -> None:
    """``lqf predict`` on a linear run: the probit probabilities of the temperature and noise chosen on
    validation (written once to calibration.json), each with the spread of the softmax under the
    scores' posterior; ``--raw`` the plain softmax."""
    import shutil

    from lqf.explain.calibrated import CALIBRATION, probability_spread
    from lqf.explain.uncertainty import Calibration, fit_calibration

    run = tmp_path / method
    shutil.copytree(runs[method], run)
    pixels = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    code, out, err = run_cli(["predict", run, tmp_path / "x.png", "--top-k", "10", "--json"], capsys)
    assert code == 0, err
    (item,) = json.loads(out)
    saved = json.loads((run / CALIBRATION).read_text())
    # the same choice, made here from the closed forms
    ex = Explainer.from_run(str(run))
    data, _, _, _ = training_split(RunDirectory.existing(str(run)), ex.config)
    val = torch.cat([x for x, _ in data.val.batches(64)])
    want = fit_calibration(*ex.predict_with_variance(val), data.val.labels)
    assert (saved["temperature"], saved["noise"]) == (want.temperature, want.noise)
    from lqf.cli.commands import load_image

    x = load_image(str(tmp_path / "x.png"), 16)[None]
    mean, var = ex.predict_with_variance(x)
    p = want(mean, var)[0]
    got = {t["class"]: t for t in item["top"]}
    for c, name in enumerate(data.classes):
        assert got[name]["probability"] == pytest.approx(float(p[c]), abs=1e-4)
    assert sum(t["probability"] for t in item["top"]) == pytest.approx(1.0, abs=1e-3)
    # the spread: the fixed-seed Monte Carlo estimate against one of many more draws
    cal = Calibration(want.temperature, want.noise, want.val_nll)
    spread = probability_spread(cal, mean, var)[0]
    gen = torch.Generator().manual_seed(7)
    eps = torch.randn((200000, 10), generator=gen, dtype=torch.float64)
    draws = torch.softmax(mean[0] / cal.temperature + (cal.noise * var[0]).sqrt() / cal.temperature * eps, -1)
    torch.testing.assert_close(spread, draws.std(0), atol=0.02, rtol=0)  # 4,096 draws against 200,000
    for c, name in enumerate(data.classes):
        assert got[name]["spread"] == pytest.approx(float(spread[c]), abs=1e-4)
    # a second call reads the saved choice; --raw is the plain softmax of the model's outputs
    (run / CALIBRATION).write_text(json.dumps(saved | {"temperature": 1.0, "noise": 0.0}))
    code, out, _ = run_cli(["predict", run, tmp_path / "x.png", "--top-k", "10", "--json"], capsys)
    plain = torch.softmax(mean[0], -1)
    assert {t["class"]: t["probability"] for t in json.loads(out)[0]["top"]} == pytest.approx(
        {name: float(plain[c]) for c, name in enumerate(data.classes)}, abs=1e-4
    )
    code, out, _ = run_cli(["predict", run, tmp_path / "x.png", "--raw", "--json"], capsys)
    assert code == 0 and "spread" not in json.loads(out)[0]["top"][0]
    code, out, _ = run_cli(["predict", run, tmp_path / "x.png"], capsys)
    assert code == 0 and "±" in out and "calibrated on the run's validation images" in out
