"""``lqf explain`` and ``lqf forget``: exact answers of a linear run.

lqf explain runs/lqf --test-index 7 --top 6     # which training images made this prediction
lqf explain runs/lqf --image boot.png
lqf explain runs/lqf --mislabels                # which training labels are probably wrong
lqf forget runs/lqf --indices 3,17 --out runs/lqf-clean
"""

from __future__ import annotations

import argparse
import os

from lqf.errors import LqfError


def add_explain_parsers(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "explain",
        help="exact influence, leave-one-out and mislabels of a linear run (lqf, linear-probe)",
        description="For a run of --method lqf (squared loss) or --method linear-probe (ridge): the exact "
        "effect of every training image on a prediction, each training image predicted by the model "
        "trained without it, and the training labels that prediction disputes. Without --image or "
        "--test-index it ranks the mislabel suspects.",
    )
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file to explain")
    ex.add_argument(
        "--test-index",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="an image of the run's test split",
    )
    ex.add_argument(
        "--mislabels", action="store_true", help="rank the training images by how suspect their label is"
    )
    ex.add_argument("--top", type=int, default=6, help="training images to show per list (default 6)")
    ex.add_argument("--out", help="folder for the reports (default: RUN_DIR/explain)")
    ex.set_defaults(func=cmd_explain)

    fo = sub.add_parser(
        "forget",
        help="remove training images from a linear run exactly, without retraining",
        description="Write a new run whose model is the one retraining without the listed training images "
        "gives (same settings and penalty), computed in closed form.",
    )
    fo.add_argument("run_dir", metavar="RUN_DIR")
    fo.add_argument(
        "--indices",
        required=True,
        metavar="FILE|LIST",
        help="training-image indices: a file (one per line, or separated by commas) or a list like 3,17,40",
    )
    fo.add_argument("--out", required=True, metavar="NEW_RUN", help="the run directory to write")
    fo.set_defaults(func=cmd_forget)


def _say(text: str = "") -> None:
    print(text, flush=True)


def cmd_explain(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise LqfError(f"--top must be >= 1, got {args.top}")
    from lqf.cli.commands import load_image
    from lqf.explain import Explainer
    from lqf.explain.report import influence_report, mislabel_report
    from lqf.explain.runs import load_linear_run, training_split
    from lqf.runs import RunDirectory

    images = [(os.path.splitext(os.path.basename(p))[0], p) for p in args.image]
    for _, path in images:
        if not os.path.isfile(path):
            raise LqfError(f"image {path!r} does not exist")
    model, train, config, options, metrics = load_linear_run(args.run_dir)
    test = None
    if args.test_index:
        data, _, _, _ = training_split(RunDirectory.existing(args.run_dir), config)
        test = data.test
        for i in args.test_index:
            if not 0 <= i < len(test):
                raise LqfError(
                    f"--test-index {i} is out of range: the run's test split has {len(test)} images"
                )
    decoded = [(name, load_image(path, config.image_size)) for name, path in images]
    out = args.out or os.path.join(args.run_dir, "explain")
    ex = Explainer(model, train, method=config.method, options=options, metrics=metrics)
    os.makedirs(out, exist_ok=True)
    _say(f"lqf explain: {ex.kind} run {args.run_dir} | {ex.n} training images | reports in {out}")
    if ex.consistency > 1e-3:
        _say(
            f"  note: the run's weights differ from the exact ridge optimum by {ex.consistency:.1e} "
            "(relative); the answers are those of the optimum"
        )
    items = list(decoded)
    for i in args.test_index:
        x, y = test.images[i], int(test.labels[i])
        x = (x.expand(3, -1, -1) if x.shape[0] == 1 else x).float() / 255.0
        items.append((f"test{i}", x, y))
    for item in items:
        name, x = item[0], item[1]
        label = item[2] if len(item) > 2 else None
        rep = influence_report(ex, x, name, out, top=args.top, label=label)
        helps = ", ".join(f"#{e['index']} {e['label']} {e['influence']:+.3f}" for e in rep["helpful"][:3])
        hurts = ", ".join(f"#{e['index']} {e['label']} {e['influence']:+.3f}" for e in rep["harmful"][:3])
        given = f" (label {rep['label']})" if rep["label"] is not None else ""
        _say(f"  {name}: predicted {rep['predicted']}{given}; helped most by {helps}; hurt most by {hurts}")
        _say(f"    wrote {os.path.join(out, f'influence-{name}.png')} and .json")
    if args.mislabels or not items:
        rows = mislabel_report(ex, out, top=max(args.top, 24))
        loo_acc = sum(r["given_label"] == r["loo_label"] for r in rows) / len(rows)
        suspects = sum(r["score"] > 0 for r in rows)
        _say(
            f"  leave-one-out accuracy {100 * loo_acc:.1f}% (each training image predicted by the model "
            f"trained without it); {suspects} images whose label that model disputes"
        )
        for r in rows[: min(5, len(rows))]:
            label, loo = r["given_label"], r["loo_label"]
            _say(f"    #{r['index']}: labelled {label}, leave-one-out {loo} ({r['score']:+.3f})")
        _say(f"    wrote {os.path.join(out, 'mislabels.png')} and mislabels.csv")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from lqf.explain.forget import forget_run
    from lqf.explain.runs import read_indices

    indices = read_indices(args.indices)
    if os.path.isfile(os.path.join(args.out, "config.json")):
        raise LqfError(f"{args.out!r} already holds a run; choose another --out")
    metrics = forget_run(args.run_dir, indices, args.out)
    _say(
        f"lqf forget: {len(indices)} training image(s) removed from {args.run_dir} in "
        f"{metrics['forget_seconds']:.2f} s (closed form; {metrics['forget_setup_seconds']:.1f} s to rebuild "
        f"the ridge problem); test accuracy {100 * metrics['test_accuracy']:.2f}%; run: {args.out}"
    )
    return 0
