"""The subcommands: each turns parsed arguments into one library call and
prints a short summary. All logic lives in the library."""

from __future__ import annotations

import argparse
import json
import os
import sys

from lqf.errors import LqfError


def _say(text: str = "") -> None:
    print(text, flush=True)


# -- fit ------------------------------------------------------------------------
def resolve_fit_settings(args: argparse.Namespace):
    """(config, options, out) from defaults < --config file < flags, or the run to resume."""
    from lqf.cli.flags import given, split_settings
    from lqf.config import FitConfig, from_dict, read_config_file
    from lqf.methods import get_method

    flags = given(args, args.setting_names)
    if args.resume:
        from lqf.runs import RunDirectory

        run = RunDirectory.existing(args.resume)
        if flags or args.config or args.out:
            names = ", ".join(
                ["--" + k.replace("_", "-") for k in flags]
                + (["--config"] if args.config else [])
                + (["--out"] if args.out else [])
            )
            raise LqfError(f"--resume continues a run with its saved settings; drop {names}")
        if run.has("metrics.json"):
            raise LqfError(
                f"run {args.resume!r} already finished; its results are in {run.file('metrics.json')}"
            )
        settings = read_config_file(run.file("config.json"))
        out = args.resume
    else:
        settings = read_config_file(args.config) if args.config else {}
        settings.update(flags)
        out = args.out
    method_cls = get_method(settings.get("method", "finetune"))
    run_settings, opt_settings = split_settings(settings, FitConfig, method_cls)
    config = from_dict(FitConfig, run_settings, source=args.config or "the command line")
    options = from_dict(method_cls.Options, opt_settings, source=args.config or "the command line")
    return config, options, out


def cmd_fit(args: argparse.Namespace) -> int:
    from lqf.runs.fit import default_run_dir, fit

    config, options, out = resolve_fit_settings(args)
    if out is None:
        out = default_run_dir(config)
    elif not args.resume and os.path.isfile(os.path.join(out, "config.json")):
        raise LqfError(
            f"{out!r} already holds a run; choose another --out, or continue it with: lqf fit --resume {out}"
        )
    args.active_run = out
    _say(
        f"lqf fit: {config.method} | {config.model} | {config.data}"
        + (f" | {config.shots} shots/class" if config.shots else "")
        + f" | run: {out}"
        + (" (resumed)" if args.resume else "")
    )
    result = fit(config, options, out=out, quiet=args.quiet, resume=bool(args.resume))
    print_summary(result.metrics, out)
    return 0


def print_summary(metrics: dict, out: str | None) -> None:
    from lqf.reports.tables import fmt

    m = metrics
    lines = [
        "",
        f"  method        {m['method']}",
        f"  model         {m['model']}",
        f"  data          {m['data']}  (train {m['n_train']}, val {m['n_val']}, test {m['n_test']}, "
        f"{m['num_classes']} classes, {m['image_size']} px)",
        f"  test accuracy {fmt(m['test_accuracy'])}    val accuracy {fmt(m['val_accuracy'])}",
        f"  train time    {m['train_seconds']:.1f} s    peak memory {m['peak_memory_mb']:.0f} MiB",
    ]
    lines += [f"  note          {note}" for note in m.get("notes", [])]
    if out:
        lines.append(
            f"  run directory {out}  (config.json, metrics.json, log.jsonl, "
            "model.safetensors, learning_curve.png)"
        )
    _say("\n".join(lines))


# -- evaluate -------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from lqf.data import load_data
    from lqf.io import write_json
    from lqf.runs.device import check_device, usable
    from lqf.runs.fit import load_run
    from lqf.training import evaluate

    if args.device:
        check_device(args.device)
    config, _, model, info = load_run(args.run_dir)
    spec = args.data or config.data
    data = load_data(
        spec, image_size=config.image_size, shots=1, val_per_class=0, seed=config.seed, max_test=args.max_test
    )
    if len(data.classes) != info["num_classes"]:
        raise LqfError(
            f"{spec!r} has {len(data.classes)} classes but the model in {args.run_dir!r} was trained on "
            f"{info['num_classes']}; evaluate on a data set with the same classes"
        )
    # a run trained on a GPU is evaluated on the CPU of a machine without one
    device = args.device or (config.device if usable(config.device) else "cpu")
    result = evaluate(model, data.test, batch_size=args.batch_size, device=device, quiet=args.quiet)
    report = {
        "data": spec,
        "n_test": len(data.test),
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
    }
    name = "evaluation-" + spec.replace(":", "-").replace("/", "_").strip("-_.") + ".json"
    write_json(os.path.join(args.run_dir, name), report)
    _say(
        f"{args.run_dir}: {spec} test accuracy {result['accuracy']:.4f} on {len(data.test)} images "
        f"(written to {name})"
    )
    return 0


# -- predict ----------------------------------------------------------------------
def load_image(path: str, size: int):
    """An image file as a float tensor ``(3, size, size)`` in ``[0, 1]``."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise LqfError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise LqfError(
            f"cannot read image {path!r} ({type(err).__name__}); is it a valid image file?"
        ) from None
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from lqf.runs.fit import load_run

    if args.top_k < 1:
        raise LqfError(f"--top-k must be >= 1, got {args.top_k}")
    config, _, model, info = load_run(args.run_dir)
    x = torch.stack([load_image(p, config.image_size) for p in args.images])
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    k = min(args.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = info["classes"]
    out = [
        {
            "image": path,
            "top": [
                {"class": classes[i], "probability": round(p, 4)}
                for p, i in zip(top.values[n].tolist(), top.indices[n].tolist(), strict=True)
            ],
        }
        for n, path in enumerate(args.images)
    ]
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        for item in out:
            best = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in item["top"])
            _say(f"{item['image']}: {best}")
    return 0


# -- compare ----------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from lqf.reports.compare import compare_runs

    _say(compare_runs(args.run_dirs, markdown=args.markdown))
    return 0


# -- demo and list ------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from lqf.reports.demo import run_demo

    args.active_run = None
    run_demo(
        out=args.out,
        data=args.data,
        model=args.model,
        shots=args.shots,
        max_test=args.max_test,
        epochs=args.epochs,
        seed=args.seed,
        quiet=args.quiet,
        say=_say,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from lqf.data import DATASETS
    from lqf.methods import methods
    from lqf.models import available_models

    _say("models:   " + ", ".join(available_models()))
    _say("data:     " + ", ".join([*DATASETS, "imagefolder:PATH", "torchvision:NAME"]))
    for name, cls in methods().items():
        _say(f"method:   {name:14s} {cls.summary}")
    return 0
