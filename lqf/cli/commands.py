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
    if method_cls.name == "finetune":
        if getattr(options, "optimizer", None) == "adamw" and "momentum" in flags:
            raise LqfError("--momentum applies to --optimizer sgd only; drop it, or add --optimizer sgd")
        if options.warmup_epochs >= config.epochs:
            raise LqfError(
                f"--warmup-epochs {options.warmup_epochs:g} leaves no epoch after the warm-up of "
                f"--epochs {config.epochs}; give fewer warm-up epochs or more epochs"
            )
    return config, options, out


def check_out(out: str) -> None:
    """``--out`` must be a folder this process can create or write into (checked before any work,
    by creating it and what is missing above it, then removing what it created)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise LqfError(f"--out {out!r} is a file, not a folder; give a folder for the run")
    made = []
    path = os.path.abspath(out)
    while not os.path.exists(path):
        made.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".lqf-write-check")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise LqfError(
            f"--out {out!r} cannot be written here ({err.strerror}); give a folder you can write"
        ) from None
    finally:
        for folder in made:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                pass


def cmd_fit(args: argparse.Namespace) -> int:
    from lqf import distributed
    from lqf.runs.fit import default_run_dir, fit

    config, options, out = resolve_fit_settings(args)
    main = distributed.env_rank() == 0  # under torchrun only process 0 writes and speaks
    if out is None:
        if distributed.launched():
            raise LqfError("under torchrun give --out: every process must name the same run directory")
        out = default_run_dir(config)
    elif main and not args.resume and os.path.isfile(os.path.join(out, "config.json")):
        raise LqfError(
            f"{out!r} already holds a run; choose another --out, or continue it with: lqf fit --resume {out}"
        )
    if main:
        check_out(out)
    if main and args.resume and not os.path.isfile(os.path.join(out, "checkpoint.pt")):
        _say(
            f"lqf fit: {out} has no checkpoint yet (it stopped before its first epoch ended): "
            "starting it over with its saved settings"
        )
    args.active_run = out
    if main:
        _say(
            f"lqf fit: {config.method} | {config.model} | {config.data}"
            + (f" | {config.shots} shots/class" if config.shots else "")
            + f" | run: {out}"
            + (" (resumed)" if args.resume else "")
        )
    result = fit(config, options, out=out, quiet=args.quiet, resume=bool(args.resume))
    if main:
        print_summary(result.metrics, out)
    distributed.finish()
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
    from lqf.runs.evaluation import summary_lines

    lines += summary_lines(m)
    lines += [f"  note          {note}" for note in m.get("notes", [])]
    if out:
        names = [n for n in sorted(os.listdir(out)) if not n.startswith(".")] if os.path.isdir(out) else []
        lines.append(f"  run directory {out}  ({', '.join(names)})")
    _say("\n".join(lines))


# -- evaluate -------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from lqf.data import load_data
    from lqf.io import write_json
    from lqf.runs.device import check_device, usable
    from lqf.runs.evaluation import summary_lines, test_report
    from lqf.runs.fit import load_run

    if args.device:
        check_device(args.device)
    if args.max_test is not None and args.full_test:
        raise LqfError("--max-test and --full-test contradict each other; give one")
    if args.max_test is not None and args.max_test < 1:
        raise LqfError(f"--max-test must be >= 1, got {args.max_test}")
    config, _, model, info = load_run(args.run_dir)
    spec = args.data or config.data
    # the run's own test images unless asked otherwise: its --max-test subset on its data set
    max_test = (
        None if args.full_test else (args.max_test or (config.max_test if spec == config.data else None))
    )
    data = load_data(
        spec, image_size=config.image_size, shots=1, val_per_class=0, seed=config.seed, max_test=max_test
    )
    classes = info.get("classes") or []
    if len(data.classes) != info["num_classes"] or (classes and list(data.classes) != list(classes)):
        raise LqfError(
            f"{spec!r} has the classes {_few(data.classes)} but the model in {args.run_dir!r} was trained on "
            f"{_few(classes) if classes else str(info['num_classes']) + ' classes'}; "
            "evaluate on a data set with the same classes in the same order"
        )
    # a run trained on a GPU is evaluated on the CPU of a machine without one
    device = args.device or (config.device if usable(config.device) else "cpu")
    # the temperature chosen on the run's validation images (runs saved before it existed: 1)
    temperature = _run_temperature(args.run_dir)
    result, _ = test_report(
        model,
        data.test,
        data.classes,
        batch_size=args.batch_size,
        device=device,
        quiet=args.quiet,
        temperature=temperature,
    )
    which = "all test images" if max_test is None else f"a fixed stratified subset of {max_test}"
    if spec == config.data and max_test == config.max_test:
        which += " (the run's own test images)"
    report = {
        "data": spec,
        "n_test": len(data.test),
        "max_test": max_test,
        "test_images": which,
        "temperature": temperature,
        **result,
    }
    suffix = "" if max_test == (config.max_test if spec == config.data else None) else f"-{len(data.test)}"
    name = "evaluation-" + spec.replace(":", "-").replace("/", "_").strip("-_.") + suffix + ".json"
    write_json(os.path.join(args.run_dir, name), report)
    _say(
        f"{args.run_dir}: {spec} test accuracy {result['test_accuracy']:.4f} on {len(data.test)} images, "
        f"{which} (written to {name})"
    )
    _say("\n".join(summary_lines(report)))
    return 0


def _few(names) -> str:
    names = list(names)
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _run_temperature(path: str) -> float:
    """The temperature in a run's ``metrics.json`` (1 when it has none)."""
    from lqf.io import read_json

    metrics = os.path.join(path, "metrics.json")
    value = read_json(metrics).get("temperature") if os.path.isfile(metrics) else None
    return float(value) if value else 1.0


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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(given: list[str]) -> list[str]:
    """The image files named, a folder standing for the image files directly inside it."""
    out = []
    for path in given:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES)
            )
            if not found:
                raise LqfError(f"folder {path!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(path)
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from lqf.runs.fit import load_run

    if args.top_k < 1:
        raise LqfError(f"--top-k must be >= 1, got {args.top_k}")
    config, options, model, info = load_run(args.run_dir)
    paths = image_paths(args.images)
    x = torch.stack([load_image(p, config.image_size) for p in paths])
    from lqf.explain.calibrated import calibrated_predictions, is_linear_run

    linear = is_linear_run(config, options) and not getattr(args, "raw", False)
    if linear:  # calibrated on validation, with the exact posterior variance of the scores
        found = calibrated_predictions(args.run_dir, x)
        probs, spread = found["probability"], found["spread"]
    else:
        temperature = 1.0 if getattr(args, "raw", False) else _run_temperature(args.run_dir)
        with torch.no_grad():
            probs = (model(x).double() / temperature).softmax(dim=1)
        spread = None
    k = min(args.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = info["classes"]
    out = []
    for n, path in enumerate(paths):
        entries = []
        for p, i in zip(top.values[n].tolist(), top.indices[n].tolist(), strict=True):
            entry = {"class": classes[i], "probability": round(p, 4)}
            if spread is not None:
                entry["spread"] = round(float(spread[n, i]), 4)
                entry["score"] = round(float(found["score"][n, i]), 4)
                entry["score_std"] = round(float(found["score_std"][n, i]), 4)
            entries.append(entry)
        out.append({"image": path, "top": entries})
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        for item in out:
            best = ", ".join(
                f"{t['class']} {100 * t['probability']:.1f}%"
                + (f" ± {100 * t['spread']:.1f}" if "spread" in t else "")
                for t in item["top"]
            )
            _say(f"{item['image']}: {best}")
        if linear:
            _say(
                f"(calibrated on the run's validation images: temperature {float(found['temperature']):.3g}, "
                f"noise {float(found['noise']):.3g}; ± is the spread of each probability under the "
                "posterior of the scores)"
            )
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
