"""``lqf`` command line: ``fit``, ``evaluate``, ``predict``, ``compare``, ``demo``, ``prune``,
``explain``, ``forget``, ``list``, ``theory``.

``main(argv) -> int`` parses, dispatches to one small function per
subcommand, and turns every :class:`~lqf.errors.LqfError` into one line on
stderr with exit status 2 (Ctrl-C: exit status 130 and how to resume). Heavy
libraries are imported inside the subcommands, so ``lqf --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lqf import __version__
from lqf.errors import LqfError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lqf: error: {message} (see: {self.prog} --help)\n")


#: subcommands whose flags come from the methods' and pruning's option dataclasses (torch imports)
HEAVY = ("fit", "prune")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command`` given, the flags of the other heavy subcommands are left
    out, so that ``lqf --help`` or ``lqf evaluate ...`` never imports torch to build them."""
    from lqf.cli import commands

    full = command is None

    parser = _Parser(
        prog="lqf",
        description="Predictable fine-tuning of pretrained networks.",
    )
    parser.add_argument("--version", action="version", version=f"lqf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = sub.add_parser(
        "fit",
        help="train a model and write a run directory",
        description="Train --method on --data from --model; writes a run directory.",
    )
    fit.add_argument("--out", help="run directory to write (default: runs/<method>-<data>-<time>)")
    fit.add_argument("--config", help="JSON or TOML file of settings (flags override it)")
    fit.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    if full or command == "fit":
        _fit_flags(fit)

    ev = sub.add_parser("evaluate", help="evaluate a run's model on a test split")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--data", help="another data set with the same classes (default: the run's)")
    ev.add_argument(
        "--max-test", type=int, help="evaluate on a stratified subset of this size (default: the run's own)"
    )
    ev.add_argument("--full-test", action="store_true", help="evaluate on every test image")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--device", help="torch device (default: the run's where this machine has it, else cpu)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=commands.cmd_evaluate)

    pr = sub.add_parser("predict", help="classify image files with a run's model")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders of them")
    pr.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.add_argument(
        "--raw",
        action="store_true",
        help="the plain softmax of the model's outputs (default: at the temperature the run chose on "
        "validation; LQF and ridge-probe runs: with the exact variance of their scores and the "
        "spread of each probability)",
    )
    pr.set_defaults(func=commands.cmd_predict)

    cmp = sub.add_parser(
        "compare",
        help="compare finished runs side by side",
        description="One row per run: its metrics and the settings that differ.",
    )
    cmp.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    cmp.add_argument("--markdown", action="store_true", help="print a Markdown table")
    cmp.set_defaults(func=commands.cmd_compare)

    demo = sub.add_parser(
        "demo",
        help="compare every method on the built-in default task",
        description="Runs every method on pretrained efficientnet_lite0 and a "
        "few-shot Fashion-MNIST task; writes a report.",
    )
    demo.add_argument("--out", default="runs/demo", help="folder for the runs and the report")
    demo.add_argument("--data", default="fashion-mnist")
    demo.add_argument("--model", default="efficientnet_lite0")
    demo.add_argument(
        "--shots", type=int, default=10, help="training images per class (default 10: the few-shot regime)"
    )
    demo.add_argument("--max-test", type=int, default=2000, help="test images")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=commands.cmd_demo)

    from lqf.cli.prune import add_prune_parser

    add_prune_parser(sub, flags=full or command == "prune")

    from lqf.cli.explain import add_explain_parsers

    add_explain_parsers(sub)

    ls = sub.add_parser("list", help="list models, data sets and methods")
    ls.set_defaults(func=commands.cmd_list)

    from lqf.cli.theory import add_theory_parser

    add_theory_parser(sub)
    return parser


def _fit_flags(fit: argparse.ArgumentParser) -> None:
    """The flags of ``lqf fit``: one per run setting and per option of every method."""
    from lqf.cli import commands
    from lqf.cli.flags import add_dataclass_flags
    from lqf.config import FitConfig

    group = fit.add_argument_group("run settings")
    run_names = add_dataclass_flags(group, FitConfig)
    from lqf.methods import methods

    for action in group._group_actions:
        if action.dest == "method":
            action.help = f"training method: {', '.join(methods())} (default: finetune)"
    option_names = []
    groups = [
        (name, cls, fit.add_argument_group(f"options of --method {name}", cls.summary))
        for name, cls in methods().items()
    ]
    for name, cls, g in groups:  # the advanced options of every method after all the common ones
        more = fit.add_argument_group(f"advanced options of --method {name}")
        option_names += add_dataclass_flags(g, cls.Options, advanced=more)
    fit.set_defaults(func=commands.cmd_fit, setting_names=run_names + option_names)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command is not None else "")
    if not argv:
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, usage errors
        return int(done.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LqfError as err:
        print(f"lqf: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from lqf import distributed

        if not (distributed.launched() and distributed.is_peer_failure(err)):
            raise
        if distributed.env_rank() == 0:
            where = getattr(args, "active_run", None)
            hint = f"; its checkpoint is kept: resume with torchrun ... -m lqf fit --resume {where}"
            print(
                f"lqf: stopped: another process of this torchrun run ended ({type(err).__name__})"
                + (hint if where and os.path.isdir(where) else ""),
                file=sys.stderr,
            )
        return 1
    except KeyboardInterrupt:
        where = getattr(args, "active_run", None)
        command = getattr(args, "resume_command", f"lqf fit --resume {where}")
        hint = f"; resume with: {command}" if where and os.path.isdir(where) else ""
        print(f"\nlqf: interrupted{hint}", file=sys.stderr)
        return 130


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
