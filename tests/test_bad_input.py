"""Bad input gets one clear line and exit status 2 before any work starts; odd input says what it does."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from .test_cli import assert_one_line_error, run_cli


def _fit(spec, out, *extra):
    return ["fit", "--model", spec, "--data", "digits", "--image-size", "16", "--quiet", "--out", out, *extra]


@pytest.mark.parametrize(
    "extra,fragments",
    [
        (["--threads", "-2"], ["--threads must be >= 1"]),
        (["--threads", "0"], ["--threads must be >= 1"]),
        (["--threads", "1000"], ["more than this machine's", "CPU cores"]),
        (["--weight-decay", "-1"], ["--weight-decay must be >= 0"]),
        (["--lr", "1e6"], ["--lr must be in (0, 10]"]),
        (["--momentum", "5", "--optimizer", "sgd"], ["--momentum must be in [0, 1)"]),
        (["--momentum", "0.5"], ["--momentum applies to --optimizer sgd only"]),
        (["--warmup-epochs", "5", "--epochs", "1"], ["--warmup-epochs 5 leaves no epoch"]),
        (["--head-lr-scale", "0"], ["--head-lr-scale must be > 0"]),
    ],
)
def test_bad_flags_are_refused_before_any_work(tiny_model_spec, tmp_path, capsys, extra, fragments) -> None:
    start = time.perf_counter()
    code, _, err = run_cli(_fit(tiny_model_spec, tmp_path / "run", *extra), capsys)
    assert_one_line_error(code, err, *fragments)
    assert time.perf_counter() - start < 5 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"run": {"shots": "five"}}, "shots must be a whole number (or null), got 'five'"),
        ({"method_options": {"lr": "fast"}}, "lr must be a number (or null), got 'fast'"),
        ({"run": {"epochs": None}}, "epochs cannot be null"),
        ({"run": {"pretrained": "yes"}}, "pretrained must be true or false"),
    ],
)
def test_a_config_file_with_a_wrong_type_is_one_line(
    tiny_model_spec, tmp_path, capsys, settings, fragment
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(settings))
    code, _, err = run_cli(_fit(tiny_model_spec, tmp_path / "run", "--config", path), capsys)
    assert_one_line_error(code, err, fragment)


def test_out_must_be_a_writable_folder(tiny_model_spec, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(_fit(tiny_model_spec, tmp_path / "file"), capsys)
    assert_one_line_error(code, err, "is a file, not a folder")
    code, _, err = run_cli(_fit(tiny_model_spec, "/proc/x/run"), capsys)
    assert_one_line_error(code, err, "cannot be written here")
    start = time.perf_counter()
    code, _, err = run_cli(["theory", "figure", "deep-depth", "--out", "/proc/x"], capsys)
    assert_one_line_error(code, err, "cannot be written here")
    assert time.perf_counter() - start < 5  # before computing the figure


def test_theory_risk_depth_one_is_refused(capsys) -> None:
    code, _, err = run_cli(["theory", "risk", "--depth", "1"], capsys)
    assert_one_line_error(code, err, "--depth must be at least 2")


def test_resume_without_a_checkpoint_says_it_starts_over(tiny_model_spec, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(_fit(tiny_model_spec, out, "--method", "linear-probe", "--shots", "3"), capsys)[0] == 0
    (out / "metrics.json").unlink()  # as if it had stopped before its first checkpoint
    code, text, err = run_cli(["fit", "--resume", out, "--quiet"], capsys)
    assert code == 0, err
    assert "no checkpoint yet" in text and "starting it over with its saved settings" in text


def test_a_batch_larger_than_the_data_is_the_whole_set(tiny_model_spec, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = _fit(tiny_model_spec, out, "--shots", "2", "--epochs", "1", "--batch-size", "1000000")
    code, text, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("--batch-size 1000000 is more than the 20 training images" in n for n in metrics["notes"])
    assert json.loads((out / "config.json").read_text())["run"]["batch_size"] == 20


def test_predict_takes_a_folder_of_images(tiny_model_spec, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(_fit(tiny_model_spec, out, "--method", "linear-probe", "--shots", "3"), capsys)[0] == 0
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(
            folder / f"{i}.png"
        )
    code, text, err = run_cli(["predict", out, folder], capsys)
    assert code == 0, err
    assert len([line for line in text.splitlines() if ".png: " in line]) == 3  # one line per image
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["predict", out, tmp_path / "empty"], capsys)
    assert_one_line_error(code, err, "holds no image file")


def test_prune_from_a_run_that_is_not_fine_tuning_is_one_line(tiny_model_spec, tmp_path, capsys) -> None:
    out = tmp_path / "probe"
    assert run_cli(_fit(tiny_model_spec, out, "--method", "linear-probe", "--shots", "3"), capsys)[0] == 0
    code, _, err = run_cli(["prune", "--from", out, "--out", tmp_path / "p"], capsys)
    assert_one_line_error(code, err, "is a linear-probe run", "--method finetune")
