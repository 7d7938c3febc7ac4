"""One run end to end: data, model, method, test evaluation, run directory.

This is what ``lqf fit`` calls; it is also the Python entry point::

    from lqf.config import FitConfig
    from lqf.runs.fit import fit
    result = fit(FitConfig(data="digits", method="linear-probe", image_size=32), out="runs/probe")
    result.metrics["test_accuracy"]
"""

from __future__ import annotations

import dataclasses
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lqf.config import FitConfig, from_dict
from lqf.errors import LqfError
from lqf.heads.factory import head_from_spec, head_spec, set_head
from lqf.methods import FitContext, get_method
from lqf.models import TransferModel, build_model
from lqf.runs.device import check_device
from lqf.runs.rundir import RunDirectory


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    model: TransferModel
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    run: RunDirectory | None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new peak-memory measurement (see :func:`peak_memory_mb`)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory in MiB since :func:`reset_peak_memory`.

    On the CPU: the peak resident set size of the process (``VmHWM`` on Linux;
    elsewhere ``getrusage``, the peak over the whole process lifetime). On
    CUDA devices: the peak of allocated tensor memory.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def model_info(model: TransferModel, config: FitConfig, classes: list[str]) -> dict[str, Any]:
    """What ``model.json`` records to rebuild ``model`` without its data."""
    return {
        "model": config.model,
        "num_classes": len(classes),
        "classes": list(classes),
        "num_features": model.num_features,
        "image_size": config.image_size,
        "input_spec": model.input_spec.to_dict(),
        "head": type(model.head).__name__,
        "head_spec": head_spec(model.head),
        **({"method_model": model.spec} if getattr(model, "spec", None) is not None else {}),
    }


def fit(
    config: FitConfig,
    options: Any | None = None,
    *,
    out: str | None = None,
    quiet: bool = False,
    resume: bool = False,
    model: TransferModel | None = None,
    data: Any | None = None,
) -> FitResult:
    """Train ``config.method`` on ``config.data`` from ``config.model``.

    Args:
        config: shared settings.
        options: the method's options dataclass (default options if ``None``).
        out: run directory to write (``None``: nothing is written).
        quiet: no progress bars.
        resume: continue from ``out``'s checkpoint (same config required).
        model: train this model (e.g. from :func:`lqf.models.wrap_module`)
            instead of building ``config.model``; it gets a fresh head for the
            data's classes. Its run directory cannot be re-opened by
            ``lqf evaluate`` unless ``config.model`` describes it.
        data: train on these splits (a :class:`~lqf.data.DataSplits`, e.g. with labels of your
            own) instead of loading ``config.data``; likewise not re-opened by ``lqf evaluate``.

    Returns:
        The trained model, ``metrics`` (``test_accuracy``, ``train_seconds``,
        ``peak_memory_mb`` ...), the per-epoch history and the run directory.
    """
    from lqf.data import load_config_data

    method_cls = get_method(config.method)
    if options is None:
        options = method_cls.Options()
    if not isinstance(options, method_cls.Options):
        raise LqfError(f"options for {config.method!r} must be {method_cls.Options.__name__}")
    check_device(config.device)
    from lqf import distributed

    if distributed.launched():  # under torchrun: join the group; only process 0 writes and prints
        device = distributed.init_from_env(config.device)
        if device != config.device:
            config = dataclasses.replace(config, device=device)
        if not distributed.is_main():
            out, quiet = None, True
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    reset_peak_memory(config.device)

    if data is None:
        data = load_config_data(config)
    notes = []
    if config.batch_size > len(data.train):
        notes.append(
            f"--batch-size {config.batch_size} is more than the {len(data.train)} training images: "
            f"batches of {len(data.train)} (the whole set) instead"
        )
        config = dataclasses.replace(config, batch_size=len(data.train))
    head_rng = torch.Generator().manual_seed(config.seed)
    if model is None:
        model = build_model(config.model, len(data.classes), pretrained=config.pretrained, generator=head_rng)
    else:
        model.reset_head(len(data.classes), generator=head_rng)
    set_head(model, config.head, seed=config.seed)
    # the run directory is made only once data and model are known to load
    fresh = bool(out) and not os.path.exists(out)
    run = RunDirectory(out) if out else None
    if run is not None:
        run.write_config(config, options)
    ctx = FitContext(config=config, run=run, quiet=quiet, resume=resume)
    if notes:
        ctx.extra["notes"] = notes
    method = method_cls(options)
    start = time.perf_counter()
    try:
        trained = method.fit(model, data, ctx)
    except LqfError:
        if run is not None and not resume:
            _discard(run, fresh)
        raise
    if trained is not None:
        model = trained
    # wall time of this process plus the epochs a resumed run had already done
    train_seconds = time.perf_counter() - start + ctx.resumed_seconds
    model.eval()
    from lqf.runs.evaluation import temperature_of, test_report, write_plots

    batch = max(256, config.batch_size)
    temperature = temperature_of(model, data.val, batch_size=batch, device=config.device)
    test, logits = test_report(
        model,
        data.test,
        data.classes,
        batch_size=batch,
        device=config.device,
        quiet=quiet,
        temperature=temperature,
    )
    metrics: dict[str, Any] = {
        "method": config.method,
        "model": config.model,
        "data": config.data,
        **{k: v for k, v in data.summary().items() if k != "data"},
        "shots": config.shots,
        "seed": config.seed,
        "test_accuracy": test["test_accuracy"],
        "test_loss": test["test_loss"],
        "val_accuracy": _last(ctx.history, "val_accuracy"),
        "temperature": temperature,
        "train_seconds": train_seconds,
        "peak_memory_mb": peak_memory_mb(config.device),
        "epochs_run": len(ctx.history),
        **({"processes": distributed.world()[1]} if distributed.active() else {}),
        **{k: v for k, v in test.items() if k not in ("test_accuracy", "test_loss")},
        **ctx.extra,
    }
    if run is not None:
        run.save_model(model, model_info(model, config, data.classes))
        run.write_metrics(metrics)
        write_plots(run.path, metrics, logits, data.test.labels, data.classes, _title(config))
        if len(ctx.history) > 1:  # a one-point curve says nothing
            from lqf.reports.plots import plot_learning_curve

            plot_learning_curve(ctx.history, run.file("learning_curve.png"), title=_title(config))
    return FitResult(model=model, metrics=metrics, history=list(ctx.history), run=run)


def _discard(run: RunDirectory, fresh: bool) -> None:
    """Undo a run that stopped on a user error before its first checkpoint: nothing is left
    (an interrupted or diverged run with a checkpoint keeps it, to resume or inspect)."""
    if run.has("checkpoint.pt"):
        return
    for name in ("config.json", "log.jsonl"):
        if run.has(name):
            os.remove(run.file(name))
    if fresh and not os.listdir(run.path):
        os.rmdir(run.path)


def _last(history: list[dict[str, Any]], key: str) -> Any:
    for record in reversed(history):
        if record.get(key) is not None:
            return record[key]
    return None


def _title(config: FitConfig) -> str:
    shots = f", {config.shots} shots/class" if config.shots else ""
    return f"{config.method}: {config.model} on {config.data}{shots}"


def load_run(path: str) -> tuple[FitConfig, Any, TransferModel, dict[str, Any]]:
    """Rebuild a finished run's model: ``(config, options, model, model_info)``."""
    from lqf.io import read_json

    run = RunDirectory.existing(path)
    saved = run.read_config()
    config = from_dict(FitConfig, saved["run"], source=run.file("config.json"))
    method_cls = get_method(config.method)
    options = from_dict(method_cls.Options, saved.get("method_options", {}), source=run.file("config.json"))
    if not run.has("model.json"):
        raise LqfError(
            f"run {path!r} did not finish (no model.json); finish it with: lqf fit --resume {path}"
        )
    info = read_json(run.file("model.json"))
    model = build_model(config.model, info["num_classes"], pretrained=False)
    head = head_from_spec(info.get("head_spec", {}))
    if head is not None:
        model.set_head(head)
    if "method_model" in info:
        model = method_cls.rebuild(model, info["method_model"], info)
    try:
        model.load_state_dict(run.load_state())
    except RuntimeError as err:
        raise LqfError(f"weights in {path!r} do not fit {config.model}: {str(err).splitlines()[0]}") from None
    return config, options, model.eval(), info


def default_run_dir(config: FitConfig) -> str:
    """``runs/<method>-<data>-<time>`` (unique per second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = config.data.replace(":", "-").replace("/", "_")
    return os.path.join("runs", f"{config.method}-{data}-{stamp}")
