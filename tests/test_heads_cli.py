"""``lqf fit --head``: end to end on the tiny network, saved runs load back with
their head, and a bad head is one line."""

from __future__ import annotations

import json

import pytest
import torch

from lqf.heads import FixedClassifier
from lqf.runs.fit import load_run

from .test_cli import _fit_args, assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "head, method, extra",
    [
        ("fixed-hadamard", "finetune", ("--epochs", "2", "--lr", "0.01")),
        ("fixed-orthogonal", "finetune", ("--epochs", "1", "--unfreeze", "head")),
        ("fixed-hadamard", "linear-probe", ("--probe", "ridge")),
        ("fixed-orthogonal", "linear-probe", ("--probe", "logistic")),
    ],
)
def test_fit_with_fixed_head_then_evaluate_and_predict(
    head, method, extra, tiny_model_spec, image_folder, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    args = _fit_args(
        tiny_model_spec, f"imagefolder:{image_folder}", out, "--method", method, "--head", head,
        "--val-per-class", "1", "--seed", "3", *extra,
    )  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "model.json").read_text())
    assert info["head_spec"]["name"] == head and info["head_spec"]["seed"] == 3

    _, _, model, _ = load_run(str(out))
    assert isinstance(model.head, FixedClassifier) and model.head.kind == head.removeprefix("fixed-")
    assert [n for n, _ in model.head.named_parameters()] == ["scale", "bias"]
    if method == "finetune":
        trained = metrics["trained_parameters"]
        if "--unfreeze" in extra:
            assert trained == 3 + 1  # three classes: the bias and the scale
    else:
        assert metrics["head_scale"] == pytest.approx(model.head.scale.item(), rel=1e-6)

    code, _, err = run_cli(["evaluate", out, "--quiet"], capsys)
    assert code == 0, err
    evaluation = json.loads(next(out.glob("evaluation-*.json")).read_text())
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    image = next((image_folder / "class_0").glob("*.png"))
    code, stdout, err = run_cli(["predict", out, image, "--json"], capsys)
    assert code == 0, err
    top = json.loads(stdout)[0]["top"]
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-3)


def test_fixed_head_matrix_is_unchanged_by_finetuning(
    tiny_model_spec, image_folder, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    args = _fit_args(
        tiny_model_spec, f"imagefolder:{image_folder}", out, "--head", "fixed-orthogonal",
        "--epochs", "2", "--lr", "0.05", "--val-per-class", "1",
    )  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    _, _, model, _ = load_run(str(out))
    fresh = FixedClassifier(model.num_features, model.num_classes, "orthogonal", seed=0)
    assert torch.equal(model.head.matrix, fresh.matrix)
    assert model.head.scale.item() != pytest.approx(fresh.scale.item())


def test_bad_head_is_one_line(tmp_path, capsys) -> None:
    code, _, err = run_cli(["fit", "--head", "hadamard", "--data", "digits"], capsys)
    assert_one_line_error(code, err, "--head", "fixed-hadamard")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"head": "learned"}))
    code, _, err = run_cli(["fit", "--config", config], capsys)
    assert_one_line_error(code, err, "--head must be one of", "'learned'")
