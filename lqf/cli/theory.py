"""``lqf theory``: figures and expected-risk calculations of the linear-teacher theory.

Subcommands: ``list`` (the figures), ``figure NAME|all --out DIR`` (regenerate a figure as
``DIR/NAME.png`` + ``DIR/NAME.csv``), ``risk`` (expected target risk of fine-tuning,
training from scratch and ridge for one Gaussian task pair: Monte Carlo and closed forms) and
``transfer`` (transferability scores of a pretrained model on a few-shot training split).
"""

from __future__ import annotations

import argparse

from lqf.errors import LqfError


def add_theory_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``lqf theory ...`` on the top-level subparsers."""
    theory = sub.add_parser(
        "theory",
        help="fine-tuning with linear teachers: figures and expected risks",
        description="Theory of fine-tuning with linear teachers (linear, deep linear and "
        "two-layer ReLU models): regenerate figures, compute expected risks.",
    )
    tsub = theory.add_subparsers(dest="theory_command", metavar="SUBCOMMAND", parser_class=type(theory))
    theory.set_defaults(func=lambda args: _help(theory))

    ls = tsub.add_parser("list", help="list the figures")
    ls.set_defaults(func=cmd_theory_list)

    fig = tsub.add_parser("figure", help="regenerate a figure: DIR/NAME.png and DIR/NAME.csv")
    fig.add_argument("name", metavar="NAME", nargs="?", help="figure name, or 'all'")
    fig.add_argument("--out", default="theory-figures", help="output folder (default: theory-figures)")
    fig.add_argument("--list", action="store_true", help="list the figures and exit")
    fig.set_defaults(func=cmd_theory_figure)

    risk = tsub.add_parser(
        "risk",
        help="expected target risk for one task pair (Monte Carlo and closed forms)",
        description="x ~ N(0, Sigma) in R^d with eigenvalues i^-spectrum (0: isotropic), "
        "y = x.theta_T + noise; theta_S at distance --dist from theta_T.",
    )
    risk.add_argument("--d", type=int, default=50, help="input dimension")
    risk.add_argument("--n", type=int, default=10, help="target samples")
    risk.add_argument("--dist", type=float, default=0.5, help="||theta_T - theta_S||")
    risk.add_argument("--target-norm", type=float, default=1.0, help="||theta_T||")
    risk.add_argument("--noise", type=float, default=0.0, help="label noise standard deviation")
    risk.add_argument("--spectrum", type=float, default=0.0, help="eigenvalue decay exponent of Sigma")
    risk.add_argument(
        "--depth",
        type=int,
        default=None,
        help="also a deep linear net of this depth (at least 2; default: none)",
    )
    risk.add_argument("--draws", type=int, default=1000, help="Monte Carlo draws")
    risk.add_argument("--seed", type=int, default=0)
    risk.set_defaults(func=cmd_theory_risk)

    tr = tsub.add_parser(
        "transfer",
        help="transferability scores on a few-shot training split (tangent gain, LogME, LEEP)",
        description="Scores computed on the training split alone: the cross-fitted risk of the "
        "ridge probe and of the network linearized in head + last block, their difference "
        "(predicted gain of linearized fine-tuning over the probe), LogME and LEEP.",
    )
    tr.add_argument("--model", default="efficientnet_lite0", help="model spec (as lqf fit)")
    tr.add_argument("--data", default="fashion-mnist", help="data spec (as lqf fit)")
    tr.add_argument("--shots", type=int, default=10, help="training images per class (>= 2)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw and the folds")
    tr.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    tr.add_argument("--val-per-class", type=int, default=20, help="as lqf fit (sets the same draw)")
    tr.add_argument("--folds", type=int, default=10, help="cross-fitting folds (>= 2)")
    tr.add_argument("--json", action="store_true", help="print the scores as JSON")
    tr.set_defaults(func=cmd_theory_transfer)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def cmd_theory_list(args: argparse.Namespace) -> int:
    from lqf.theory.figures import figures

    for name, spec in figures().items():
        print(f"{name:24s} {spec.summary}")
    return 0


def cmd_theory_figure(args: argparse.Namespace) -> int:
    from lqf.theory.figures import figures, get_figure, make_figure

    if args.list:
        return cmd_theory_list(args)
    if not args.name:
        raise LqfError(f"give a figure name or 'all'; valid: {', '.join(figures())}")
    names = list(figures()) if args.name == "all" else [get_figure(args.name).name]
    from lqf.cli.commands import check_out

    check_out(args.out)  # before minutes of computing
    for name in names:
        done = make_figure(name, args.out)
        print(f"{name}: {done['png']}, {done['csv']} ({done['seconds']:.1f} s)", flush=True)
    return 0


def cmd_theory_risk(args: argparse.Namespace) -> int:
    import numpy as np

    from lqf.theory.deep_linear import flow_limit
    from lqf.theory.expectations import (
        Covariance,
        deterministic_risk,
        estimator,
        isotropic_expected_risk,
        monte_carlo_risk,
        similarity_measure,
    )

    for flag in ("d", "n", "draws"):
        if getattr(args, flag) <= 0:
            raise LqfError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.depth is not None and args.depth < 2:
        raise LqfError(
            f"--depth must be at least 2 (a deep linear net), got {args.depth}; leave it out for none"
        )
    args.depth = args.depth or 1
    for flag in ("dist", "target_norm", "noise"):
        if getattr(args, flag) < 0:
            raise LqfError(f"--{flag.replace('_', '-')} must be non-negative, got {getattr(args, flag)}")
    if args.spectrum < 0:
        raise LqfError(f"--spectrum must be >= 0 (0: isotropic), got {args.spectrum}")
    if args.target_norm == 0 and args.depth > 1:
        raise LqfError("--depth > 1 needs theta_S != 0; use --target-norm > 0 or --dist != target norm")
    d, n = args.d, args.n
    cov = Covariance.isotropic(d) if args.spectrum == 0 else Covariance.power_law(d, args.spectrum)
    rng = np.random.default_rng(args.seed)
    g = rng.standard_normal(d)
    theta_T = args.target_norm * g / np.linalg.norm(g)
    h = rng.standard_normal(d)
    h -= (h @ theta_T) / max(theta_T @ theta_T, 1e-300) * theta_T if args.target_norm else 0.0
    theta_S = theta_T + args.dist * h / np.linalg.norm(h)
    print(
        f"d={d} n={n} ||theta_T||={args.target_norm} ||theta_T-theta_S||={args.dist} noise={args.noise} "
        f"spectrum=i^-{args.spectrum} draws={args.draws} seed={args.seed}"
    )
    print(f"similarity measure S_n = {similarity_measure(n, theta_S, theta_T, cov):.6g}")
    fits = {name: estimator(name, theta_S) for name in ("finetune", "scratch", "ridge")}
    if args.depth > 1:
        if not np.any(theta_S):
            raise LqfError("theta_S is zero; a deep linear factorisation needs theta_S != 0")
        fits[f"deep-linear L={args.depth}"] = lambda X, y: flow_limit(X, y, theta_S, args.depth)
    starts = {"finetune": theta_S, "scratch": np.zeros(d)}
    print(f"{'method':20s} {'MC mean':>12s} {'95% CI':>12s} {'closed form':>12s} {'det. equiv.':>12s}")
    for name, fit in fits.items():
        est = monte_carlo_risk(fit, n, cov, theta_T, noise=args.noise, draws=args.draws, seed=args.seed + 1)
        closed = det = ""
        if name in starts:
            start = starts[name]
            if args.spectrum == 0:
                closed = (
                    f"{isotropic_expected_risk(n, d, float(np.sum((theta_T - start) ** 2)), args.noise):.6g}"
                )
            det = f"{deterministic_risk(n, start, theta_T, cov, args.noise):.6g}"
        print(
            f"{name:20s} {est.mean:12.6g} {'+-' + format(est.half_width, '.3g'):>12s} "
            f"{closed:>12s} {det:>12s}"
        )
    return 0


def cmd_theory_transfer(args: argparse.Namespace) -> int:
    import json

    import torch

    from lqf.data import load_data
    from lqf.models import build_model
    from lqf.theory.transfer import transfer_scores

    if args.shots < 2:
        raise LqfError(f"--shots must be >= 2 (cross-fitting holds images out), got {args.shots}")
    if args.folds < 2:
        raise LqfError(f"--folds must be >= 2, got {args.folds}")
    data = load_data(
        args.data,
        image_size=args.image_size,
        shots=args.shots,
        val_per_class=args.val_per_class,
        seed=args.seed,
        max_test=1,
    )
    model = build_model(args.model, len(data.classes))
    images = torch.cat([x for x, _ in data.train.batches(256)])
    folds = min(args.folds, args.shots)
    out = transfer_scores(
        model,
        images,
        data.train.labels,
        len(data.classes),
        model_name=args.model,
        folds=folds,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    n = len(data.train.labels)
    print(f"{args.model} on {args.data}: {n} training images, {args.shots} per class, seed {args.seed}")
    print(f"cross-fitted ({out['folds']} folds) squared error / accuracy on held-out training images:")
    print(f"  ridge probe                 {out['probe_mse']:.4f}  {100 * out['probe_accuracy']:.1f}%")
    print(f"  linearized head+last block  {out['tangent_mse']:.4f}  {100 * out['tangent_accuracy']:.1f}%")
    print(
        f"  same, GD limit (lambda->0)  {out['tangent_gd_mse']:.4f}  {100 * out['tangent_gd_accuracy']:.1f}%"
    )
    print(f"tangent gain (probe - linearized squared error): {out['gain_mse']:+.4f}")
    print(f"LogME: {out['logme']:.4f}")
    print("LEEP: " + (f"{out['leep']:.4f}" if out["leep"] is not None else "n/a (no source classifier)"))
    return 0
