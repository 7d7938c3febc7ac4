"""Reliability: resumed runs equal uninterrupted ones, NaN losses stop cleanly,
files are written atomically, seeded runs are reproducible."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lqf.config import FitConfig
from lqf.errors import NonFiniteLossError
from lqf.io import write_json
from lqf.methods import FitContext, get_method
from lqf.methods.finetune import FinetuneOptions
from lqf.runs import RunDirectory
from lqf.runs.fit import fit


def _config(spec: str, **kw) -> FitConfig:
    base = dict(
        model=spec,
        data="digits",
        method="finetune",
        image_size=16,
        shots=8,
        val_per_class=4,
        epochs=3,
        batch_size=16,
        seed=5,
    )
    base.update(kw)
    return FitConfig(**base)


class _Stop(KeyboardInterrupt):
    pass


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resumed_run_matches_uninterrupted_run(tiny_model_spec: str, tmp_path, monkeypatch) -> None:
    """Interrupt after epoch 1 (as Ctrl-C would), resume: bit-identical weights,
    history and test accuracy. The model has dropout and BatchNorm, so the
    global RNG state and BN statistics must both be restored."""
    config = _config(tiny_model_spec)
    options = FinetuneOptions(lr=1e-2)
    full = fit(config, options, out=str(tmp_path / "full"), quiet=True)

    def stop_after_first(epoch: int) -> None:
        if epoch == 1:
            raise _Stop

    original_init = FitContext.__init__

    def init_with_hook(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if not self.resume:
            self.on_epoch_end = stop_after_first

    monkeypatch.setattr(FitContext, "__init__", init_with_hook)
    part = str(tmp_path / "part")
    with pytest.raises(_Stop):
        fit(config, options, out=part, quiet=True)
    run = RunDirectory(part)
    assert run.load_checkpoint()["epoch"] == 1
    assert not run.has("metrics.json")
    torch.manual_seed(999)  # a different global RNG state before resuming must not matter
    resumed = fit(config, options, out=part, quiet=True, resume=True)

    for key, value in _state(full.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    assert strip(run.read_log()) == strip(full.history)
    assert full.metrics["test_accuracy"] == resumed.metrics["test_accuracy"]


def test_seeded_runs_are_reproducible(tiny_model_spec: str) -> None:
    config = _config(tiny_model_spec, epochs=2)
    a = fit(config, FinetuneOptions(lr=1e-2), quiet=True)
    b = fit(config, FinetuneOptions(lr=1e-2), quiet=True)
    c = fit(_config(tiny_model_spec, epochs=2, seed=6), FinetuneOptions(lr=1e-2), quiet=True)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_spec: str, tmp_path, monkeypatch) -> None:
    """Weights poisoned after epoch 1 make epoch 2's loss NaN: training stops
    with a clear message and the checkpoint of epoch 1 (finite) is kept."""
    config = _config(tiny_model_spec)
    original_init = FitContext.__init__
    holder: dict = {}

    def init_with_hook(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        holder["ctx"] = self

        def poison(epoch: int) -> None:
            if epoch == 1:
                with torch.no_grad():
                    holder["model"].head.weight.fill_(float("nan"))

        self.on_epoch_end = poison

    method_cls = get_method("finetune")
    original_fit = method_cls.fit

    def fit_and_remember(self, model, data, ctx):
        holder["model"] = model
        return original_fit(self, model, data, ctx)

    monkeypatch.setattr(FitContext, "__init__", init_with_hook)
    monkeypatch.setattr(method_cls, "fit", fit_and_remember)
    out = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError) as info:
        fit(config, FinetuneOptions(lr=1e-2), out=out, quiet=True)
    message = str(info.value)
    assert "became nan at epoch 2" in message and "checkpoint of epoch 1" in message and "--lr" in message
    checkpoint = RunDirectory(out).load_checkpoint()
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_huge_learning_rate_gives_non_finite_error(tiny_model_spec: str) -> None:
    options = FinetuneOptions(optimizer="sgd")
    options.lr = 1e30  # past the flag's bound (which refuses it up front): the loop's own guard
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        fit(_config(tiny_model_spec, epochs=2), options, quiet=True)


def test_atomic_write_leaves_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "m.json"
    write_json(str(path), {"a": 1})
    with pytest.raises(TypeError):
        write_json(str(path), {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_written_files_get_the_users_usual_permissions(tmp_path) -> None:
    """0o666 less the umask, as a plain open() gives, not a temporary file's owner-only 0o600."""
    old = os.umask(0o022)
    try:
        write_json(str(tmp_path / "a.json"), {"a": 1})
        os.umask(0o077)
        write_json(str(tmp_path / "b.json"), {"b": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_run_directory_contents(tiny_model_spec: str, tmp_path) -> None:
    out = tmp_path / "run"
    result = fit(_config(tiny_model_spec, epochs=2), FinetuneOptions(lr=1e-2), out=str(out), quiet=True)
    names = set(os.listdir(out))
    assert {
        "config.json",
        "metrics.json",
        "log.jsonl",
        "model.safetensors",
        "model.json",
        "learning_curve.png",
        "checkpoint.pt",
    } <= names
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "method",
        "model",
        "data",
        "n_train",
        "n_test",
        "test_accuracy",
        "train_seconds",
        "peak_memory_mb",
    ):
        assert key in metrics
    assert metrics["n_train"] == 80 and metrics["test_accuracy"] == result.metrics["test_accuracy"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["run"]["seed"] == 5 and saved["method_options"]["lr"] == 1e-2
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_ctrl_c_keeps_checkpoint_and_resume_finishes(tiny_model_spec: str, tmp_path) -> None:
    """A real SIGINT to a running ``lqf fit``: exit status 130, a one-line hint
    to resume, a readable checkpoint; ``--resume`` then finishes the run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lqf",
        "fit",
        "--model",
        tiny_model_spec,
        "--data",
        "digits",
        "--image-size",
        "16",
        "--epochs",
        "20000",  # never finished before the interrupt, however fast the machine
        "--shots",
        "20",
        "--quiet",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"resume with: lqf fit --resume {out}" in err
    done = RunDirectory(str(out)).load_checkpoint()["epoch"]
    assert 1 <= done < 20000
    assert not (out / "metrics.json").exists()
    # finish quickly: the saved config asks for 20000 epochs, so shorten it in config.json first
    saved = json.loads((out / "config.json").read_text())
    saved["run"]["epochs"] = done + 1
    (out / "config.json").write_text(json.dumps(saved))
    proc = subprocess.run(
        [sys.executable, "-m", "lqf", "fit", "--resume", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    log = RunDirectory(str(out)).read_log()
    assert [r["epoch"] for r in log] == list(range(1, done + 2))
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == done + 1


def test_peak_memory_is_measured_per_run() -> None:
    import numpy as np

    from lqf.runs.fit import peak_memory_mb, reset_peak_memory

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("peak reset needs Linux /proc")
    big = np.ones(100_000_000)  # 763 MiB, touched
    before = peak_memory_mb()
    del big
    reset_peak_memory()
    after = peak_memory_mb()
    assert before - after > 500


def test_a_long_run_says_how_long_it_will_take(tiny_model_spec: str, monkeypatch, capsys) -> None:
    import lqf.training.loop as loop

    monkeypatch.setattr(loop, "ESTIMATE_AT_LEAST", 0.0)  # every run counts as long
    monkeypatch.setattr(loop, "ESTIMATE_AFTER", 1)
    monkeypatch.setenv("LQF_PROGRESS", "line")
    fit(_config(tiny_model_spec, epochs=2), FinetuneOptions(), quiet=False)
    err = capsys.readouterr().err
    assert "epoch(s) to go: about" in err and "at this pace" in err
    fit(_config(tiny_model_spec, epochs=2), FinetuneOptions(), quiet=True)
    assert "at this pace" not in capsys.readouterr().err
