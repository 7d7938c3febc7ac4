"""``torchrun`` with 2 gloo processes on the CPU gives what 1 process gives: the same fine-tuning
trajectory (same global batch, BatchNorm frozen, no dropout), the same probe, the same LQF optimum
with the kernel route and with multi-shift CG. Only process 0 writes the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LQF_CODE = os.path.join(ROOT, "lqf") + os.sep
COMMON = [
    "--data",
    "digits",
    "--image-size",
    "16",
    "--shots",
    "9",
    "--val-per-class",
    "2",
    "--max-test",
    "40",
]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def _fit(out, model, flags, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LQF_PROGRESS": "line"}
    args = ["-m", "lqf", "fit", "--model", model, *COMMON, "--quiet", "--out", str(out), *flags]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def _weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dist") / "net.pt"
    torch.save(_net(), path)
    return f"file:{path}"


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "finetune", "--epochs", "2", "--batch-size", "15", "--bn", "frozen", "--lr", "1e-2"],
        # 45 images in batches of 22: shares of 11, and a last batch of 1 (nothing on process 1)
        ["--method", "finetune", "--epochs", "2", "--batch-size", "22", "--bn", "frozen", "--lr", "1e-2"],
        ["--method", "linear-probe"],
        ["--method", "lqf", "--linearize", "all", "--solver", "kernel"],
        ["--method", "lqf", "--linearize", "all", "--solver", "cg"],
        [
            "--method",
            "lqf",
            "--linearize",
            "all",
            "--solver",
            "cg",
            "--tol",
            "1e-9",
            "--preconditioner",
            "kfac",
        ],
        [
            "--method",
            "lqf",
            "--linearize",
            "all",
            "--solver",
            "sgd",
            "--epochs",
            "3",
            "--preconditioner",
            "kfac",
        ],
    ],
    ids=["finetune", "finetune-uneven", "probe", "lqf-kernel", "lqf-cg", "lqf-kfac-cg", "lqf-kfac-sgd"],
)
def test_two_processes_give_the_one_process_result(tmp_path, model, flags) -> None:
    one = _fit(tmp_path / "one", model, flags, 1)
    two = _fit(tmp_path / "two", model, flags, 2)
    assert two["processes"] == 2 and "processes" not in one
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:  # float rounding of sums split across processes, grown over the steps
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1 / 40 + 1e-9)
    if flags[-1] == "cg":  # each process made its share of the factors; CG all-reduced P floats per product
        info = two["solver_info"]
        assert info["processes"] == 2 and "all_reduce_calls" not in one["solver_info"]
        assert info["all_reduce_calls"] == info["matrix_products"] + 1  # and one for the right-hand side
        assert info["all_reduce_bytes"] == info["all_reduce_calls"] * 4 * two["linearized_parameters"]
    if flags[-1] == "kernel":  # each process summed its share of the kernel's blocks and solved its ridges
        info = two["solver_info"]
        rows = info["kernel_rows"]
        assert info["processes"] == 2 and info["all_reduce_calls"] == 1
        assert info["all_reduce_bytes"] == info["kernel_all_reduce_bytes"] == 8 * rows * rows
        assert info["factorizations_here"] == 3  # ridges 0, 2, 4 of the five on process 0
        assert [r["ridge_relative"] for r in two["ridge_grid"]] == [
            r["ridge_relative"] for r in one["ridge_grid"]
        ]
        for r1, r2 in zip(one["ridge_grid"], two["ridge_grid"], strict=True):
            assert r2["val_accuracy"] == r1["val_accuracy"] and r2["train_accuracy"] == r1["train_accuracy"]
    if "kfac" in flags:  # each process accumulated its share of the Kronecker factors; all-reduced
        assert two["kfac_all_reduce_bytes"] > 0 and "kfac_all_reduce_bytes" not in one
    if flags[1] == "finetune":  # a step communicates DDP's gradient buckets only (loss and hits in them)
        assert two["step_collectives"] == 0 and "step_collectives" not in one
    if flags[1] == "finetune":  # the whole trajectory, epoch by epoch
        log = lambda p: [json.loads(line) for line in (p / "log.jsonl").read_text().splitlines()]  # noqa: E731
        for r1, r2 in zip(log(tmp_path / "one"), log(tmp_path / "two"), strict=True):
            assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
            assert r2["train_accuracy"] == r1["train_accuracy"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "finetune", "--epochs", "1", "--batch-size", "15"],
        ["--method", "linear-probe"],
        ["--method", "lqf", "--linearize", "all", "--solver", "kernel"],
        ["--method", "lqf", "--linearize", "all", "--solver", "cg"],
    ],
    ids=["finetune", "probe", "lqf-kernel", "lqf-cg"],
)
def test_one_process_touches_no_distributed_machinery(tmp_path, model, flags, monkeypatch) -> None:
    """Without torchrun no process group is joined, no model is wrapped in DDP and no collective is
    called: each of them raises here, and the fit still succeeds."""
    import torch.distributed as dist
    import torch.nn.parallel

    from lqf.cli.main import main

    def refuse(*args, **kwargs):
        raise AssertionError("a one-process run used torch.distributed")

    for name in (
        "init_process_group",
        "all_reduce",
        "all_gather",
        "broadcast",
        "broadcast_object_list",
        "barrier",
    ):
        monkeypatch.setattr(dist, name, refuse)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", refuse)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    assert main(["fit", "--model", model, *COMMON, "--quiet", "--out", str(out), *flags]) == 0
    assert not dist.is_initialized() and "processes" not in json.loads((out / "metrics.json").read_text())


def _processes_of(out) -> dict[int, int]:
    """``{rank: pid}`` of the lqf processes writing to ``out`` (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if str(out).encode() in cmd and b"torch.distributed.run" not in cmd and b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the processes through /proc")
def test_a_killed_process_stops_the_run_with_one_line_and_keeps_its_checkpoint(tmp_path, model) -> None:
    """SIGKILL of process 1 in the middle of fine-tuning: torchrun stops process 0, which says so in
    one line (no traceback of lqf's) within the timeout; the checkpoint of the last epoch loads."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LQF_PROGRESS": "line", "LQF_DIST_TIMEOUT": "60"}
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lqf", "fit"]
    args += ["--model", model, *COMMON, "--quiet", "--out", str(out), "--method", "finetune"]
    args += ["--epochs", "20000", "--batch-size", "15", "--bn", "frozen"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        ranks = _processes_of(out)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and took < 60, (proc.returncode, took)
    ours = [line for line in err.splitlines() if line.startswith("lqf:")]
    assert len(ours) == 1 and "another process of this torchrun run ended" in ours[0], err[-3000:]
    assert f"--resume {out}" in ours[0]
    # torchrun prints its own report (with its own traceback); none comes from lqf's code
    assert not [line for line in err.splitlines() if line.strip().startswith("File") and LQF_CODE in line], (
        err
    )
    torch.load(out / "checkpoint.pt", weights_only=False)  # the last epoch's checkpoint is whole


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_collective_timeout_is_refused_in_one_line(value, monkeypatch) -> None:
    from lqf.distributed import timeout_seconds
    from lqf.errors import LqfError

    monkeypatch.setenv("LQF_DIST_TIMEOUT", value)
    with pytest.raises(LqfError, match="LQF_DIST_TIMEOUT must be a number of seconds > 0"):
        timeout_seconds()
    monkeypatch.setenv("LQF_DIST_TIMEOUT", "42")
    assert timeout_seconds() == 42.0
