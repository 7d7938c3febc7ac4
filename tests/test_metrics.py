"""Metrics beyond top-1 accuracy, against their definitions; in every run, ``lqf evaluate``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lqf.training.metrics import (
    accuracy_at_coverage,
    classification_metrics,
    confusion,
    expected_calibration_error,
)

from .test_cli import assert_one_line_error, run_cli


def _ece_by_definition(probs, labels, bins=15):
    total = 0.0
    n = len(labels)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(n) if (lo < probs[i].max() <= hi) or (b == 0 and probs[i].max() <= hi)]
        if members:
            acc = sum(int(probs[i].argmax() == labels[i]) for i in members) / len(members)
            conf = sum(float(probs[i].max()) for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 80), c=st.integers(2, 6))
def test_ece_and_coverage_match_their_definitions(seed, n, c) -> None:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, c, (n,), generator=g)
    assert expected_calibration_error(probs, labels) == pytest.approx(
        _ece_by_definition(probs, labels), abs=1e-12
    )
    keep = max(1, round(0.8 * n))
    conf = probs.max(1).values
    top = sorted(range(n), key=lambda i: (-float(conf[i]), i))[:keep]
    want = sum(int(probs[i].argmax() == labels[i]) for i in top) / keep
    assert accuracy_at_coverage(probs, labels, 0.8) == pytest.approx(want)
    table = confusion(probs.argmax(1), labels, c)
    assert int(table.sum()) == n and int(table.diagonal().sum()) == int((probs.argmax(1) == labels).sum())


def test_balanced_accuracy_shows_what_top1_hides() -> None:
    """90 images of class 0, 10 of class 1: always saying 0 scores 90% top-1 but 50% balanced;
    a model right on 80% of each class scores 80% on both."""
    labels = torch.tensor([0] * 90 + [1] * 10)
    majority = torch.tensor([[1.0, 0.0]] * 100)
    m = classification_metrics(majority, labels, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.9) and m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 0.0}
    pred = torch.tensor([0] * 72 + [1] * 18 + [1] * 8 + [0] * 2)
    useful = torch.nn.functional.one_hot(pred, 2).double()
    m = classification_metrics(useful, labels, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.8) and m["balanced_accuracy"] == pytest.approx(0.8)
    onehot = torch.nn.functional.one_hot(labels, 2).double()
    p = torch.softmax(useful, 1)
    assert m["brier"] == pytest.approx(float((p - onehot).pow(2).sum(1).mean()))
    assert m["nll"] == pytest.approx(float(-torch.log(p[torch.arange(100), labels]).mean()))
    # a class with no test image has no accuracy, and does not count in the balanced mean
    m = classification_metrics(torch.tensor([[1.0, 0.0, 0.0]] * 100), labels, ["a", "b", "c"])
    assert m["per_class_accuracy"]["c"] is None and m["balanced_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        accuracy_at_coverage(p, labels, 0.0)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_model_spec):
    from lqf.config import FitConfig
    from lqf.runs.fit import fit

    out = tmp_path_factory.mktemp("metrics") / "probe"
    config = FitConfig(
        model=tiny_model_spec,
        data="digits",
        method="linear-probe",
        image_size=16,
        shots=6,
        val_per_class=3,
        max_test=40,
    )
    fit(config, out=str(out), quiet=True)
    return out


def test_every_run_reports_the_metrics_and_their_pictures(probe_run) -> None:
    m = json.loads((probe_run / "metrics.json").read_text())
    for key in ("test_balanced_accuracy", "test_nll", "test_brier", "test_ece", "test_accuracy_at_80"):
        assert isinstance(m[key], float) and math.isfinite(m[key])
    assert len(m["test_per_class_accuracy"]) == 10 and sum(map(sum, m["test_confusion"])) == m["n_test"] == 40
    for name in ("confusion.png", "reliability.png"):
        assert (probe_run / name).read_bytes()[:4] == b"\x89PNG"
    assert not (probe_run / "learning_curve.png").exists()  # one point: no curve


def test_evaluate_scores_the_runs_own_test_images_unless_told(probe_run, capsys) -> None:
    saved = json.loads((probe_run / "metrics.json").read_text())
    code, out, err = run_cli(["evaluate", probe_run, "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((probe_run / "evaluation-digits.json").read_text())
    assert report["n_test"] == 40 and report["test_accuracy"] == saved["test_accuracy"]
    assert "the run's own test images" in out and "balanced acc" in out
    code, out, err = run_cli(["evaluate", probe_run, "--full-test", "--quiet"], capsys)
    assert code == 0, err
    full = [p for p in probe_run.glob("evaluation-digits-*.json")]
    assert len(full) == 1 and json.loads(full[0].read_text())["n_test"] > 40
    assert json.loads((probe_run / "evaluation-digits.json").read_text()) == report  # not overwritten
    code, _, err = run_cli(["evaluate", probe_run, "--full-test", "--max-test", "10"], capsys)
    assert_one_line_error(code, err, "contradict")
    code, _, err = run_cli(["evaluate", probe_run, "--data", "fashion-mnist"], capsys)
    assert_one_line_error(code, err, "same classes")


def test_the_temperature_is_the_grid_minimum_of_validation_nll_and_changes_no_prediction() -> None:
    from lqf.training.metrics import TEMPERATURES, fit_temperature

    gen = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(300, 4, generator=gen, dtype=torch.float64)  # overconfident scores
    labels = torch.where(
        torch.rand(300, generator=gen) < 0.7, logits.argmax(1), torch.randint(0, 4, (300,), generator=gen)
    )
    t = fit_temperature(logits, labels)
    nll = lambda s: float(-torch.log_softmax(logits / s, 1)[torch.arange(300), labels].mean())  # noqa: E731
    assert nll(t) <= min(nll(s) for s in TEMPERATURES) + 1e-12 and t > 1  # it cools overconfidence
    m = classification_metrics(logits, labels, ["a", "b", "c", "d"], temperature=t)
    direct = classification_metrics(logits, labels, ["a", "b", "c", "d"], probs=torch.softmax(logits / t, 1))
    plain = classification_metrics(logits, labels, ["a", "b", "c", "d"])
    for key in ("nll", "brier", "ece", "accuracy_at_80"):
        assert m[key] == pytest.approx(direct[key], abs=1e-12)
    for key in ("nll", "brier", "ece"):
        assert m[f"{key}_raw"] == pytest.approx(plain[key], abs=1e-12)
    assert m["accuracy"] == plain["accuracy"] and m["confusion"] == plain["confusion"]
    assert fit_temperature(logits[:0], labels[:0]) == 1.0


def test_a_run_keeps_the_temperature_of_its_validation_images(probe_run) -> None:
    from lqf.data import load_config_data
    from lqf.runs.fit import load_run
    from lqf.training.evaluate import predict_logits
    from lqf.training.metrics import fit_temperature

    m = json.loads((probe_run / "metrics.json").read_text())
    config, _, model, _ = load_run(str(probe_run))
    val = load_config_data(config).val
    assert m["temperature"] == fit_temperature(predict_logits(model, val), val.labels)
    assert {"test_nll_raw", "test_ece_raw", "test_brier_raw"} <= set(m)
