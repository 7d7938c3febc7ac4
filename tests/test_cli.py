"""The command line: end to end on a tiny model, and one clear line (exit
status 2, no traceback) for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lqf.cli.main import main
from lqf.reports.compare import METRICS

from .conftest import write_image_folder


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("lqf: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _fit_args(model: str, data: str, out: Path, *extra: str) -> list:
    return ["fit", "--model", model, "--data", data, "--image-size", "16", "--quiet", "--out", out, *extra]


def test_fit_evaluate_predict_end_to_end(tiny_model_spec, image_folder, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    extra = ("--method", "finetune", "--epochs", "2", "--val-per-class", "1", "--lr", "0.01")
    code, stdout, _ = run_cli(_fit_args(tiny_model_spec, f"imagefolder:{image_folder}", out, *extra), capsys)
    assert code == 0
    assert "test accuracy" in stdout and str(out) in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 24

    code, stdout, _ = run_cli(["evaluate", out, "--quiet"], capsys)
    assert code == 0
    files = list(out.glob("evaluation-*.json"))
    assert len(files) == 1
    evaluation = json.loads(files[0].read_text())
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)

    image = next((image_folder / "class_1").glob("*.png"))
    code, stdout, _ = run_cli(["predict", out, image, "--json", "--top-k", "2"], capsys)
    assert code == 0
    predictions = json.loads(stdout)
    assert predictions[0]["image"] == str(image)
    top = predictions[0]["top"]
    assert len(top) == 2 and {t["class"] for t in top} <= {"class_0", "class_1", "class_2"}
    assert top[0]["probability"] >= top[1]["probability"]

    code, _, err = run_cli(["fit", "--resume", out], capsys)
    assert_one_line_error(code, err, "already finished")
    code, _, err = run_cli(["fit", "--data", "digits", "--out", out], capsys)
    assert_one_line_error(code, err, "already holds a run", "--resume")


def test_config_file_and_flags(tiny_model_spec, tmp_path, capsys) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        f'model = "{tiny_model_spec}"\ndata = "digits"\nmethod = "linear-probe"\nimage-size = 16\n'
        'shots = 5\nval_per_class = 3\nprobe = "ridge"\nseed = 1\n'
    )
    out = tmp_path / "probe"
    code, _, err = run_cli(["fit", "--config", config, "--seed", "2", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["run"]["seed"] == 2  # the flag overrides the file
    assert saved["run"]["image_size"] == 16 and saved["method_options"]["probe"] == "ridge"
    # the saved config reproduces the run
    again = tmp_path / "again"
    code, _, _ = run_cli(["fit", "--config", out / "config.json", "--out", again, "--quiet"], capsys)
    assert code == 0
    first = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert json.loads((again / "metrics.json").read_text())["test_accuracy"] == first


def _corrupt_folder(root: Path) -> Path:
    write_image_folder(root)
    (root / "class_1" / "broken.png").write_bytes(b"this is not a png")
    return root


def _empty_class_folder(root: Path) -> Path:
    write_image_folder(root)
    (root / "class_9").mkdir()
    (root / "class_9" / "notes.txt").write_text("no images here")
    return root


BAD_INPUTS = {
    "unknown-model": (["--model", "resnet"], ["unknown model 'resnet'", "efficientnet_lite0"]),
    "unknown-data": (["--data", "cifar"], ["unknown data set 'cifar'", "fashion-mnist"]),
    "unknown-method": (["--method", "lqff"], ["unknown method 'lqff'", "finetune"]),
    "missing-data-path": (["--data", "imagefolder:/no/such/folder"], ["/no/such/folder", "does not exist"]),
    "missing-model-path": (["--model", "file:/no/such/model.pt"], ["/no/such/model.pt", "does not exist"]),
    "shots-too-large": (["--data", "digits", "--shots", "500"], ["--shots"]),
    "bad-shots": (["--shots", "0"], ["--shots must be >= 1"]),
    "option-of-other-method": (["--method", "linear-probe", "--lr", "0.1"], ["--lr", "finetune"]),
    "bad-unfreeze": (["--unfreeze", "half"], ["--unfreeze"]),
    "non-numeric": (["--epochs", "ten"], ["--epochs", "ten"]),
    "not-a-device": (["--device", "gpu"], ["--device 'gpu' is not a torch device", "cpu, cuda"]),
    # no machine has 100 CUDA devices: refused with or without CUDA
    "device-not-here": (["--device", "cuda:99"], ["--device cuda:99"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line(case, tiny_model_spec, tmp_path, capsys) -> None:
    flags, fragments = BAD_INPUTS[case]
    base = _fit_args(tiny_model_spec, "digits", tmp_path / "run", "--epochs", "1")
    code, _, err = run_cli([*base, *flags], capsys)
    assert_one_line_error(code, err, *fragments)
    if case != "option-of-other-method":
        assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("make_folder", "fragment"),
    [(_corrupt_folder, "broken.png"), (_empty_class_folder, "class_9")],
    ids=["corrupt-image", "class-without-images"],
)
def test_bad_image_folder_names_the_culprit(make_folder, fragment, tiny_model_spec, tmp_path, capsys) -> None:
    folder = make_folder(tmp_path / "images")
    args = _fit_args(tiny_model_spec, f"imagefolder:{folder}", tmp_path / "run")
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, fragment)


def test_nan_loss_gives_one_line(tiny_model_spec, tmp_path, capsys) -> None:
    extra = ("--shots", "5", "--epochs", "2", "--lr", "1e30", "--optimizer", "sgd")
    code, _, err = run_cli(_fit_args(tiny_model_spec, "digits", tmp_path / "run", *extra), capsys)
    assert_one_line_error(code, err, "--lr must be in (0, 10]")  # refused before training
    extra = ("--shots", "5", "--epochs", "2", "--method", "lqf", "--solver", "sgd", "--lqf-lr", "1e12")
    code, _, err = run_cli(_fit_args(tiny_model_spec, "digits", tmp_path / "lqf", *extra), capsys)
    assert_one_line_error(code, err, "training loss", "--lqf-lr")


def test_predict_and_evaluate_bad_paths(tiny_model_spec, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = _fit_args(tiny_model_spec, "digits", out, "--shots", "3", "--method", "linear-probe")
    assert run_cli(args, capsys)[0] == 0
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00\x01 not an image")
    code, _, err = run_cli(["predict", out, garbage], capsys)
    assert_one_line_error(code, err, "garbage.jpg")
    code, _, err = run_cli(["predict", out, tmp_path / "missing.png"], capsys)
    assert_one_line_error(code, err, "missing.png", "does not exist")
    code, _, err = run_cli(["evaluate", tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(
        ["evaluate", out, "--data", f"imagefolder:{write_image_folder(tmp_path / 'f')}"], capsys
    )
    assert_one_line_error(
        code, err, "has the classes class_0, class_1, class_2", "trained on 0, 1, 2, 3", "same classes"
    )
    code, _, err = run_cli(["fit", "--resume", tmp_path], capsys)
    assert_one_line_error(code, err, "not a run directory")


def test_console_script_prints_no_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lqf", "fit", "--data", "nope", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown data set 'nope'" in proc.stderr


def test_list_and_help(capsys) -> None:
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and "efficientnet_lite0" in out and "linear-probe" in out and "fashion-mnist" in out
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    # every method's common options first, then the advanced ones
    common, advanced = out.split("run settings:")[1].split("advanced options of --method finetune:")
    assert "--unfreeze" in common and "--solver" in common and "--around " in common
    assert "--label-smoothing" in advanced and "--damping" in advanced and "--damping" not in common
    assert main(["prune", "--help"]) == 0
    common, advanced = capsys.readouterr().out.split("pruning options:")[1].split("advanced pruning options")
    assert "--target-drop" in common and "--allow-over-target" in common
    assert "--round-reference" in advanced and "--back-off-until" in advanced and "--select-val" in advanced


def test_compare_shows_metrics_and_differing_settings(tiny_model_spec, tmp_path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((a, "1"), (b, "2")):
        args = _fit_args(
            tiny_model_spec, "digits", out, "--shots", "3", "--method", "linear-probe", "--seed", seed
        )
        assert run_cli(args, capsys)[0] == 0
    code, out, _ = run_cli(["compare", a, b], capsys)
    assert code == 0
    header, _, row_a, row_b = out.strip().splitlines()
    assert header.split()[:3] == ["run", "method", "test_accuracy"] and header.split()[-1] == "seed"
    accuracy = json.loads((a / "metrics.json").read_text())["test_accuracy"]
    assert row_a.split()[0] == str(a) and row_a.split()[2] == f"{accuracy:.4f}" and row_a.split()[-1] == "1"
    assert row_b.split()[-1] == "2"
    # a run of another method adds no column for its options: only run settings that differ
    c = tmp_path / "c"
    args = _fit_args(tiny_model_spec, "digits", c, "--shots", "3", "--method", "lqf", "--seed", "1")
    assert run_cli(args, capsys)[0] == 0
    code, out, _ = run_cli(["compare", a, b, c], capsys)
    header = out.strip().splitlines()[0].split()
    assert header == ["run", *METRICS, "seed"], header
    (b / "metrics.json").unlink()
    code, _, err = run_cli(["compare", a, b], capsys)
    assert_one_line_error(code, err, "not finished", "--resume")


def test_evaluate_falls_back_to_the_cpu_and_checks_its_device_flag(tiny_model_spec, tmp_path, capsys) -> None:
    """A run trained on a device this machine lacks is evaluated on the CPU; an explicit bad
    ``--device`` is one line."""
    out = tmp_path / "run"
    assert run_cli(_fit_args(tiny_model_spec, "digits", out, "--epochs", "1", "--shots", "3"), capsys)[0] == 0
    config = json.loads((out / "config.json").read_text())
    config["run"]["device"] = "cuda:99"  # as if trained on a machine with many GPUs
    (out / "config.json").write_text(json.dumps(config))
    code, stdout, _ = run_cli(["evaluate", out, "--quiet"], capsys)
    assert code == 0, stdout
    evaluation = json.loads(next(out.glob("evaluation-*.json")).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    code, _, err = run_cli(["evaluate", out, "--device", "gpu"], capsys)
    assert_one_line_error(code, err, "--device 'gpu'")


def test_help_imports_no_torch() -> None:
    """``lqf --help`` and the help of light subcommands build without torch (well under 0.5 s)."""
    code = (
        "import sys, contextlib, io\n"
        "from lqf.cli.main import main\n"
        "for argv in (['--help'], ['evaluate', '--help'], ['explain', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(argv) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
