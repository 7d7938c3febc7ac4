"""End to end on the real pretrained model and real data (marked slow; CI runs them)."""

from __future__ import annotations

import json

import pytest

from lqf.cli.main import main

pytestmark = pytest.mark.slow


def test_fit_finetune_efficientnet_on_fashion_mnist_10_shots(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "fit",
            "--model",
            "efficientnet_lite0",
            "--data",
            "fashion-mnist",
            "--method",
            "finetune",
            "--shots",
            "10",
            "--epochs",
            "3",
            "--max-test",
            "500",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 100 and metrics["n_test"] == 500
    assert metrics["test_accuracy"] > 0.3  # pretrained features: far above chance (0.1) after 3 epochs
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert "test accuracy" in capsys.readouterr().out


def test_demo_writes_report_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--shots", "5", "--epochs", "2", "--max-test", "300", "--quiet"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    from lqf.methods import methods

    assert all(f"| {name} |" in report for name in methods())
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "test_accuracy" in printed
    # a second call reuses the finished runs
    assert main(args) == 0
    assert printed.count("already done") == 0
    assert capsys.readouterr().out.count("already done") == len(methods())
