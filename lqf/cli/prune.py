"""``lqf prune``: Fine-Pruning (or a baseline) of a fine-tuned run, resumable.

    lqf prune --from runs/ft --target-drop 1 --rounds 3 --trials 24 --out runs/pruned
    lqf prune --model efficientnet_lite0 --data fashion-mnist --shots 200 --out runs/pruned
    lqf prune --resume runs/pruned
    lqf prune --from runs/ft --storage journal:runs/search.log --study ft --out runs/pruned
    lqf prune --worker --storage journal:runs/search.log --study ft     # more processes, same search

Without ``--from`` the model is first fine-tuned (``lqf fit`` defaults, into
``RUN_DIR/finetune``). With ``--from`` the data split settings come from that
run, so the pruning sees the validation images the run was selected on and
never its training or test images in the wrong role.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

from lqf.errors import LqfError

#: run settings that may differ from the --from run (they do not change the data split)
FREE_SETTINGS = ("batch_size", "device", "threads", "max_test")
#: what a --worker may set: where the search is, and this process's resources
WORKER_SETTINGS = ("storage", "study", "device", "threads")


def add_prune_parser(sub: argparse._SubParsersAction, flags: bool = True) -> None:
    """``lqf prune``; ``flags=False`` leaves out the flags built from the option dataclasses (they
    import torch), for a parser that only lists the subcommands."""

    pr = sub.add_parser(
        "prune",
        help="prune a fine-tuned model (Fine-Pruning: per-layer rates by Bayesian optimisation)",
        description="Prune a fine-tuned model jointly with fine-tuning; per-layer pruning rates are "
        "chosen by Bayesian optimisation on the validation split. Writes a run directory with the "
        "pruned model, a compressed checkpoint, the search history and plots.",
    )
    pr.add_argument("--from", dest="source", metavar="RUN_DIR", help="the fine-tuned run to prune")
    pr.add_argument("--out", help="run directory to write (default: runs/prune-<strategy>-<data>-<time>)")
    pr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted prune run")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.add_argument(
        "--worker",
        action="store_true",
        help="evaluate trials of the shared search --study in --storage (started by lqf prune "
        "--storage URL --study NAME) until it is done; nothing else is needed",
    )
    if not flags:
        pr.set_defaults(func=cmd_prune)
        return
    from lqf.cli.flags import add_dataclass_flags
    from lqf.config import FitConfig
    from lqf.pruning.options import PruneOptions

    run_group = pr.add_argument_group("run settings (without --from)")
    run_names = add_dataclass_flags(run_group, FitConfig, skip=("method",))
    common = pr.add_argument_group("pruning options")
    advanced = pr.add_argument_group("advanced pruning options (the research settings)")
    prune_names = add_dataclass_flags(common, PruneOptions, advanced=advanced)
    pr.set_defaults(func=cmd_prune, run_names=run_names, prune_names=prune_names)


def resolve(args: argparse.Namespace) -> tuple[Any, Any, Any, str | None, str]:
    """``(config, finetune_options, prune_options, source, out)`` from the flags or the run to resume."""
    from lqf.cli.flags import given
    from lqf.config import FitConfig, from_dict
    from lqf.io import read_json
    from lqf.methods.finetune import FinetuneOptions
    from lqf.pruning.options import PruneOptions
    from lqf.runs import RunDirectory

    run_flags = given(args, args.run_names)
    prune_flags = given(args, args.prune_names)
    if args.resume:
        run = RunDirectory.existing(args.resume)
        extra = [*run_flags, *prune_flags] + [n for n in ("source", "out") if getattr(args, n)]
        if extra:
            names = ", ".join("--" + ("from" if n == "source" else n.replace("_", "-")) for n in extra)
            raise LqfError(f"--resume continues a run with its saved settings; drop {names}")
        if run.has("metrics.json"):
            raise LqfError(f"prune run {args.resume!r} already finished; see {run.file('metrics.json')}")
        config, ft, options, source = saved_settings(args.resume)
        return config, ft, options, source, args.resume
    options = from_dict(PruneOptions, prune_flags, source="the command line")
    if args.source:
        src = RunDirectory.existing(args.source)
        saved = read_json(src.file("config.json"))
        if "prune_options" in saved:
            raise LqfError(f"--from {args.source!r} is a prune run; pass the fine-tuned run it came from")
        method = saved.get("run", {}).get("method")
        if method != "finetune":
            raise LqfError(
                f"--from {args.source!r} is a {method} run; Fine-Pruning prunes a fine-tuned network: "
                "pass a run of --method finetune (or leave --from out to fine-tune first)"
            )
        base = dict(saved["run"])
        for name, value in run_flags.items():
            if name not in FREE_SETTINGS and value != base.get(name):
                raise LqfError(
                    f"--{name.replace('_', '-')} {value} differs from the --from run's {base.get(name)!r}; "
                    "the data split and model come from that run: drop the flag"
                )
            base[name] = value
        config = from_dict(FitConfig, base, source=src.file("config.json"))
        ft = from_dict(FinetuneOptions, saved.get("method_options", {}), source=src.file("config.json"))
        source = args.source
    else:
        config = from_dict(FitConfig, {**run_flags, "method": "finetune"}, source="the command line")
        ft = FinetuneOptions()
        source = None
    out = args.out
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = os.path.join(
            "runs", f"prune-{options.strategy}-{config.data.replace(':', '-').replace('/', '_')}-{stamp}"
        )
    elif os.path.isfile(os.path.join(out, "config.json")):
        raise LqfError(
            f"{out!r} already holds a run; choose another --out, "
            f"or continue it with: lqf prune --resume {out}"
        )
    return config, ft, options, source, out


def saved_settings(folder: str) -> tuple[Any, Any, Any, str | None]:
    """``(config, finetune_options, prune_options, source)`` of the prune run in ``folder``."""
    from lqf.config import FitConfig, from_dict
    from lqf.io import read_json
    from lqf.methods.finetune import FinetuneOptions
    from lqf.pruning.options import PruneOptions
    from lqf.runs import RunDirectory

    run = RunDirectory.existing(folder)
    saved = read_json(run.file("config.json"))
    if "prune_options" not in saved:
        raise LqfError(f"{folder!r} is not a prune run (no prune options in its config.json)")
    config = from_dict(FitConfig, saved["run"], source=run.file("config.json"))
    ft = from_dict(FinetuneOptions, saved.get("method_options", {}), source=run.file("config.json"))
    # runs saved before --space existed searched per-group fractions
    saved_options = {"space": "fraction"} | saved["prune_options"]
    options = from_dict(PruneOptions, saved_options, source=run.file("config.json"))
    return config, ft, options, saved.get("source")


def cmd_worker(args: argparse.Namespace) -> int:
    """``lqf prune --worker``: evaluate trials of a shared search (:func:`lqf.pruning.shared.work`)."""
    from lqf.cli.flags import given
    from lqf.pruning.shared import work

    flags = {**given(args, args.run_names), **given(args, args.prune_names)}
    extra = [n for n in flags if n not in WORKER_SETTINGS] + [
        n for n in ("source", "out", "resume") if getattr(args, n)
    ]
    if extra:
        names = ", ".join("--" + ("from" if n == "source" else n.replace("_", "-")) for n in extra)
        raise LqfError(
            f"--worker takes its settings from the coordinator's run; drop {names} "
            "(a worker needs only --storage, --study, and optionally --threads and --device)"
        )
    if not flags.get("storage") or not flags.get("study"):
        raise LqfError("--worker needs --storage URL and --study NAME: the ones the coordinator was given")
    say = lambda text: print(text, flush=True)

    def load(folder: str):
        from lqf.pruning.measure import search_inputs
        from lqf.pruning.spaces import make_space

        config, ft, options, source = saved_settings(folder)
        config = dataclasses.replace(config, **{k: flags[k] for k in ("device", "threads") if k in flags})
        if options.storage is None:
            raise LqfError(f"the run {folder!r} does not share its search (it has no --storage)")
        model, data = _load_start(
            config,
            ft,
            source or os.path.join(folder, "finetune"),
            folder,
            True,
            say,
            lambda: None,
            extra_val=options.extra_val,
        )
        model.to(config.device)
        inputs = search_inputs(model, data, config, options)

        def space_of(state):
            model.load_state_dict(state["model"])
            model.eval()
            return make_space(
                options.space,
                inputs.layers,
                theta_max=options.theta_max,
                max_step=options.max_step,
                group_factor=options.group_factor,
            )

        return inputs.measure, space_of

    work(flags["storage"], flags["study"], load, say=say)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from lqf import __version__, distributed
    from lqf.io import write_json
    from lqf.pruning.finepruning import prune

    if distributed.launched():
        raise LqfError(
            "lqf prune runs in one process; start it without torchrun (lqf fit runs under it), and "
            "share its search with lqf prune --worker"
        )
    if getattr(args, "worker", False):
        return cmd_worker(args)
    from lqf.runs import RunDirectory

    config, ft_options, options, source, out = resolve(args)
    args.active_run = out
    args.resume_command = f"lqf prune --resume {out}"
    say = lambda text: print(text, flush=True)
    say(
        f"lqf prune: {options.strategy} | {config.model} | {config.data}"
        + (f" | {config.shots} shots/class" if config.shots else "")
        + f" | from: {source or 'fine-tuning first'} | run: {out}"
        + (" (resumed)" if args.resume else "")
    )

    def write_config() -> None:
        if not args.resume:
            write_json(
                os.path.join(out, "config.json"),
                {
                    "lqf_version": __version__,
                    "run": dataclasses.asdict(config),
                    "method_options": dataclasses.asdict(ft_options),
                    "prune_options": dataclasses.asdict(options),
                    "source": source,
                },
            )

    model, data = _load_start(
        config, ft_options, source, out, args.quiet, say, write_config, extra_val=options.extra_val
    )
    run = RunDirectory(out)
    result = prune(model, data, config, options, run=run, resume=bool(args.resume), quiet=args.quiet, say=say)
    print_summary(result.metrics, out, say)
    m = result.metrics
    if m.get("within_target") is False and not options.allow_over_target:
        drop = m.get("select_drop_points", m["val_drop_points"])
        print(
            f"lqf: error: the pruned model is {drop:.2f} points below the unpruned one on validation, "
            f"over --target-drop {options.epsilon:g} (kept in {out}); --allow-over-target accepts it",
            file=sys.stderr,
        )
        return 1
    return 0


def _load_start(config, ft_options, source, out, quiet, say, write_config, extra_val: int = 0):
    """The fine-tuned model to prune and its data split; ``write_config`` is called once both
    are known to load (before fine-tuning when there is no ``source``, so that is resumable).
    ``extra_val`` more validation images per class join the split (the train split is unchanged)."""
    from lqf.data import load_data
    from lqf.runs.fit import fit, load_run, seed_everything

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    data = load_data(
        config.data,
        image_size=config.image_size,
        shots=config.shots,
        val_per_class=config.val_per_class,
        seed=config.seed,
        max_test=config.max_test,
        extra_val=extra_val,
    )
    if source is None:
        source = os.path.join(out, "finetune")
        write_config()
        if not os.path.isfile(os.path.join(source, "metrics.json")):
            say(f"fine-tuning first ({config.epochs} epochs) into {source}")
            resume = os.path.isfile(os.path.join(source, "checkpoint.pt"))
            fit(config, ft_options, out=source, quiet=quiet, resume=resume)
        model = load_run(source)[2]
    else:
        model = load_run(source)[2]
        write_config()
    seed_everything(config.seed)
    if model.num_classes != len(data.classes):
        raise LqfError(
            f"the model in {source!r} has {model.num_classes} classes, {config.data} has {len(data.classes)}"
        )
    return model, data


def print_summary(m: dict, out: str, say) -> None:
    mib = lambda n: f"{n / 2**20:.2f} MiB"
    lines = [
        "",
        f"  strategy       {m['strategy']}  ({m['objective']})",
        f"  accuracy       test {100 * m['test_accuracy']:.2f}%"
        f" (unpruned {100 * m['reference_test_accuracy']:.2f}%,"
        f" drop {m['test_drop_points']:+.2f})   val {100 * m['val_accuracy']:.2f}%"
        f" (unpruned {100 * m['reference_val_accuracy']:.2f}%, drop {m['val_drop_points']:+.2f})",
        f"  compression    {m['compression']:.2f}x: {m['params_kept']:,} of {m['params_prunable']:,} "
        f"prunable parameters kept ({100 * m['removed_fraction']:.1f}% removed)",
        f"  file size      {mib(m['packed_file_bytes'])} packed vs {mib(m['dense_file_bytes'])} dense "
        f"({m['file_size_ratio']:.2f}x smaller)",
    ]
    if m.get("n_select"):
        lines.append(
            f"  held out       {100 * m['select_accuracy']:.2f}% on the {m['n_select']:,} validation images "
            f"held out for the final choice (unpruned {100 * m['reference_select_accuracy']:.2f}%, "
            f"drop {m['select_drop_points']:+.2f})"
        )
    if m["trials"]:
        lines.append(
            f"  search         {m['trials']} trials: {m['search_eval_seconds']:.0f} s evaluating, "
            f"{m['search_sampler_seconds']:.0f} s in the sampler "
            f"({100 * m['search_overhead_share']:.1f}% overhead)"
        )
    if m.get("back_off"):
        undone = ", ".join(str(b["round"]) for b in m["back_off"])
        lines.append(
            f"  back-off       undid round(s) {undone}: {m['tune_epochs_run']} fine-tuning epochs in all"
        )
    lines += [
        f"  time           {m['seconds']:.0f} s",
        f"  run directory  {out}  (model.safetensors, model.packed.safetensors, history.json, "
        "metrics.json, pareto.png, rates.png)",
    ]
    say("\n".join(lines))
