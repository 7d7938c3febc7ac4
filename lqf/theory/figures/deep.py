"""Deep linear network figures: risk vs depth, rescaled source/target, frozen first layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from lqf.theory.deep_linear import balanced_factorization, flow_limit, frozen_limit, train_deep_linear
from lqf.theory.expectations import mc_summary
from lqf.theory.figures import Rows, register
from lqf.theory.figures._common import band, perturbed_target, unit
from lqf.theory.linear import closest_interpolant


def _mc(predict: Any, theta_T: np.ndarray, n: int, noise: float, draws: int, seed: int) -> Any:
    """MC over X ~ N(0, I) (n, d) of ||predict(X, y) - theta_T||^2 (Sigma = I)."""
    rng = np.random.default_rng(seed)
    d = theta_T.shape[0]
    vals = []
    for _ in range(draws):
        X = rng.standard_normal((n, d))
        y = X @ theta_T + noise * rng.standard_normal(n)
        diff = predict(X, y) - theta_T
        vals.append(float(diff @ diff))
    return mc_summary(vals)


@register("deep-depth", "deep linear nets: risk vs depth for theta_T = alpha theta_S + eps xi, n = d/10")
def deep_depth(plt: Any) -> tuple[Any, Rows]:
    d, n, draws = 100, 10, 500
    rng = np.random.default_rng(0)
    theta_S = unit(rng.standard_normal(d))
    depths = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    rows: Rows = []
    settings = [(0.5, 0.3), (1.0, 0.3), (2.0, 0.3), (2.0, 0.0)]
    for k, (alpha, eps) in enumerate(settings):
        theta_T = perturbed_target(theta_S, alpha, eps, np.random.default_rng(10 + k))
        est = [
            _mc(lambda X, y, L=L: flow_limit(X, y, theta_S, L), theta_T, n, 0.0, draws, seed=k)
            for L in depths
        ]
        band(axes[0], depths, est, f"alpha={alpha}, eps={eps}", "--o" if eps == 0 else "-o")
        for L, e in zip(depths, est, strict=True):
            rows.append(
                {
                    "panel": "depth",
                    "alpha": alpha,
                    "eps": eps,
                    "noise": 0.0,
                    "depth": L,
                    "mc_mean": e.mean,
                    "mc_ci95": e.half_width,
                }
            )
    axes[0].set_yscale("log")
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].set_xlabel("depth L")
    axes[0].set_ylabel(f"E risk (flow limit, d={d}, n={n}, Sigma=I)")
    axes[0].set_title("risk vs depth (noise-free)", fontsize=9)
    axes[0].legend(fontsize=8)
    # noise
    theta_T = perturbed_target(theta_S, 2.0, 0.3, np.random.default_rng(12))
    for noise in (0.0, 0.1, 0.3):
        est = [
            _mc(lambda X, y, L=L: flow_limit(X, y, theta_S, L), theta_T, n, noise, draws, seed=7)
            for L in depths
        ]
        band(axes[1], depths, est, f"label noise {noise}")
        for L, e in zip(depths, est, strict=True):
            rows.append(
                {
                    "panel": "noise",
                    "alpha": 2.0,
                    "eps": 0.3,
                    "noise": noise,
                    "depth": L,
                    "mc_mean": e.mean,
                    "mc_ci95": e.half_width,
                }
            )
    axes[1].set_xlabel("depth L")
    axes[1].set_title("alpha=2, eps=0.3: effect of label noise", fontsize=9)
    axes[1].legend(fontsize=8)
    # simulated GD vs closed form
    sim_rng = np.random.default_rng(3)
    gd, closed = [], []
    for alpha in (0.5, 2.0):
        theta_T = perturbed_target(theta_S, alpha, 0.3, sim_rng)
        for L in (1, 2, 3, 5, 8):
            X = sim_rng.standard_normal((n, d))
            y = X @ theta_T
            ws = balanced_factorization(theta_S, L, width=8, seed=L)
            top = np.linalg.norm(X, 2) ** 2 / n
            size = max(1.0, float(np.linalg.norm(np.linalg.pinv(X) @ y)))
            res = train_deep_linear(X, y, ws, lr=0.1 / (L * top * size ** (2 - 2 / L)), max_steps=50_000)
            w_flow = flow_limit(X, y, theta_S, L)
            r_gd = float((res.w - theta_T) @ (res.w - theta_T))
            r_fl = float((w_flow - theta_T) @ (w_flow - theta_T))
            gd.append(r_gd)
            closed.append(r_fl)
            rows.append(
                {
                    "panel": "gd_check",
                    "alpha": alpha,
                    "eps": 0.3,
                    "noise": 0.0,
                    "depth": L,
                    "gd_risk": r_gd,
                    "flow_risk": r_fl,
                    "gd_steps": res.steps,
                    "gd_converged": res.converged,
                    "max_abs_w_diff": float(np.abs(res.w - w_flow).max()),
                }
            )
    axes[2].plot(closed, gd, "o")
    lim = [min(closed + gd), max(closed + gd)]
    axes[2].plot(lim, lim, "k:", linewidth=1)
    axes[2].set_xlabel("risk of the closed-form flow limit")
    axes[2].set_ylabel("risk after gradient descent on the factors")
    axes[2].set_title("GD on W_L...W_1 (L=1,2,3,5,8) vs closed form", fontsize=9)
    return fig, rows


@register("deep-rescale", "7-layer net: rescaling theta_S or theta_T, compared with depths 1, 3 and 64")
def deep_rescale(plt: Any) -> tuple[Any, Rows]:
    d, n, draws, eps = 100, 10, 150, 0.3
    rng = np.random.default_rng(1)
    theta_S = unit(rng.standard_normal(d))
    base_T = perturbed_target(theta_S, 1.0, eps, rng)
    scales = np.logspace(-1, 1, 9)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows: Rows = []
    for ax, which in zip(axes, ("source", "target"), strict=True):
        for L in (1, 3, 7, 64):
            est = []
            for k, a in enumerate(scales):
                src = a * theta_S if which == "source" else theta_S
                tgt = a * base_T if which == "target" else base_T
                e = _mc(lambda X, y, src=src, L=L: flow_limit(X, y, src, L), tgt, n, 0.0, draws, seed=k)
                # relative risk: excess risk / ||theta_T||^2
                scale = float(tgt @ tgt)
                est.append(type(e)(e.mean / scale, e.half_width / scale, e.values / scale))
                rows.append(
                    {
                        "rescaled": which,
                        "factor": float(a),
                        "depth": L,
                        "mc_mean": e.mean,
                        "mc_ci95": e.half_width,
                        "relative_risk": e.mean / scale,
                    }
                )
            band(ax, scales, est, f"depth {L}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"factor c ({which} weights multiplied by c)")
        ax.set_title(f"theta_T = theta_S + {eps} xi, then {which} x c; d={d}, n={n}", fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("E risk / ||theta_T||^2")
    return fig, rows


@register("deep-freeze", "7-layer net: fine-tuning all layers vs freezing the first 1 or 3 layers")
def deep_freeze(plt: Any) -> tuple[Any, Rows]:
    d, L, draws = 100, 7, 100
    rng = np.random.default_rng(2)
    theta_S = unit(rng.standard_normal(d))
    theta_T = perturbed_target(theta_S, 1.0, 0.5, rng)
    ns = [5, 10, 20, 40, 60, 80, 95]
    methods = {
        "depth 7, all layers trained": lambda X, y: flow_limit(X, y, theta_S, L),
        "depth 7, first layer(s) frozen": lambda X, y: frozen_limit(X, y, theta_S),
        "depth 1 (linear)": lambda X, y: closest_interpolant(X, y, theta_S),
        "scratch (linear from 0)": lambda X, y: closest_interpolant(X, y, np.zeros(d)),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows: Rows = []
    for k, (label, fit) in enumerate(methods.items()):
        est = [_mc(fit, theta_T, n, 0.0, draws, seed=n) for n in ns]
        band(axes[0], ns, est, label, ["-o", "-s", "-^", "--"][k])
        for n, e in zip(ns, est, strict=True):
            rows.append({"method": label, "n": n, "mc_mean": e.mean, "mc_ci95": e.half_width})
    # simulated GD with frozen layers on single draws
    sim = np.random.default_rng(5)
    for frozen, marker in ((1, "kx"), (3, "k+")):
        xs, ys = [], []
        for n in (10, 40, 80):
            X = sim.standard_normal((n, d))
            y = X @ theta_T
            ws = balanced_factorization(theta_S, L, width=8, seed=n)
            res = train_deep_linear(X, y, ws, frozen=frozen, max_steps=20_000)
            risk = float((res.w - theta_T) @ (res.w - theta_T))
            limit = frozen_limit(X, y, theta_S)
            xs.append(n)
            ys.append(risk)
            rows.append(
                {
                    "method": f"GD, first {frozen} frozen (one draw)",
                    "n": n,
                    "gd_risk": risk,
                    "closed_form_risk": float((limit - theta_T) @ (limit - theta_T)),
                    "gd_steps": res.steps,
                    "train_loss": res.loss,
                }
            )
        axes[0].plot(xs, ys, marker, markersize=9, label=f"GD, first {frozen} frozen (one draw)")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("target samples n")
    axes[0].set_ylabel(f"E risk (d={d}, Sigma=I)")
    axes[0].set_title("theta_T = theta_S + 0.5 xi (xi orthogonal to theta_S, unit)", fontsize=9)
    axes[0].legend(fontsize=7)
    # risk vs perturbation at n = 20
    epss = [0.0, 0.1, 0.2, 0.4, 0.7, 1.0]
    for k, (label, fit_maker) in enumerate(
        {
            "all layers trained": lambda: lambda X, y: flow_limit(X, y, theta_S, L),
            "first layer(s) frozen": lambda: lambda X, y: frozen_limit(X, y, theta_S),
        }.items()
    ):
        est = []
        for j, eps in enumerate(epss):
            tgt = perturbed_target(theta_S, 1.0, eps, np.random.default_rng(50 + j))
            e = _mc(fit_maker(), tgt, 20, 0.0, draws, seed=j)
            est.append(e)
            rows.append(
                {
                    "method": f"depth 7, {label}",
                    "n": 20,
                    "eps": eps,
                    "mc_mean": e.mean,
                    "mc_ci95": e.half_width,
                }
            )
        band(axes[1], epss, est, f"depth 7, {label}", ["-o", "-s"][k])
    axes[1].plot(epss, [e**2 for e in epss], "k:", linewidth=1, label="eps^2 (risk of theta_S itself)")
    axes[1].set_xlabel("perturbation eps")
    axes[1].set_title("n = 20", fontsize=9)
    axes[1].legend(fontsize=8)
    return fig, rows
