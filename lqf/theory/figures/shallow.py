"""Shallow ReLU network figure: sample complexity of fine-tuning in the NTK regime."""

from __future__ import annotations

from typing import Any

import numpy as np

from lqf.theory.expectations import mc_summary
from lqf.theory.figures import Rows, register
from lqf.theory.figures._common import band, unit
from lqf.theory.ntk import TwoLayer, kernel_fit, train


@register("ntk-sample-complexity", "two-layer ReLU net: target risk vs n, fine-tuning vs scratch, by angle")
def ntk_sample_complexity(plt: Any) -> tuple[Any, Rows]:
    d, m, n_source, draws = 10, 1000, 200, 10
    rng = np.random.default_rng(0)
    theta_S = unit(rng.standard_normal(d))
    Xtest = rng.standard_normal((2000, d))
    init = TwoLayer.init(d, m, seed=0)
    XS = rng.standard_normal((n_source, d))
    source = train(init, XS, XS @ theta_S, steps=800).net
    src_risk = float(np.mean((source(Xtest) - Xtest @ theta_S) ** 2))
    moved = float(np.linalg.norm(source.W - init.W) / np.linalg.norm(init.W))
    xi = rng.standard_normal(d)
    xi = unit(xi - (xi @ theta_S) * theta_S)
    ns = [5, 10, 20, 40, 80, 160]
    angles = [0, 30, 60, 90]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    rows: Rows = []

    def risk(pred: np.ndarray, theta_T: np.ndarray) -> float:
        return float(np.mean((pred - Xtest @ theta_T) ** 2))

    at40: dict[str, list] = {"finetune": [], "init kernel + source start": []}
    for deg in angles:
        phi = np.deg2rad(deg)
        theta_T = np.cos(phi) * theta_S + np.sin(phi) * xi
        fine, mixed = [], []
        for n in ns:
            vals_f, vals_m = [], []
            for j in range(draws):
                X = np.random.default_rng(1000 * n + j).standard_normal((n, d))
                y = X @ theta_T
                vals_f.append(risk(kernel_fit(source, X, y, Xtest), theta_T))
                vals_m.append(risk(kernel_fit(init, X, y, Xtest, start=source), theta_T))
            fine.append(mc_summary(vals_f))
            mixed.append(mc_summary(vals_m))
            rows.append(
                {
                    "angle_deg": deg,
                    "delta_sq": float(np.sum((theta_T - theta_S) ** 2)),
                    "n": n,
                    "method": "finetune (NTK at source weights)",
                    "mean": fine[-1].mean,
                    "ci95": fine[-1].half_width,
                    "draws": draws,
                }
            )
            rows.append(
                {
                    "angle_deg": deg,
                    "delta_sq": float(np.sum((theta_T - theta_S) ** 2)),
                    "n": n,
                    "method": "init kernel + source start",
                    "mean": mixed[-1].mean,
                    "ci95": mixed[-1].half_width,
                    "draws": draws,
                }
            )
        band(axes[0], ns, fine, f"fine-tune, angle {deg}")
        at40["finetune"].append(fine[ns.index(40)].mean)
        at40["init kernel + source start"].append(mixed[ns.index(40)].mean)
    scratch = []
    for n in ns:
        vals = []
        for j in range(draws):
            X = np.random.default_rng(1000 * n + j).standard_normal((n, d))
            vals.append(risk(kernel_fit(init, X, X @ theta_S, Xtest), theta_S))
        scratch.append(mc_summary(vals))
        rows.append(
            {
                "angle_deg": "any",
                "delta_sq": 1.0,
                "n": n,
                "method": "scratch (NTK at init)",
                "mean": scratch[-1].mean,
                "ci95": scratch[-1].half_width,
                "draws": draws,
            }
        )
    band(axes[0], ns, scratch, "scratch (any target)", "--", color="gray")
    # actual gradient descent of the wide network at a few points
    for deg, marker in ((30, "kx"), (90, "k+")):
        phi = np.deg2rad(deg)
        theta_T = np.cos(phi) * theta_S + np.sin(phi) * xi
        for n in (10, 40):
            X = np.random.default_rng(1000 * n).standard_normal((n, d))
            y = X @ theta_T
            res = train(source, X, y, steps=4000)
            r_gd = risk(res.net(Xtest), theta_T)
            r_k = risk(kernel_fit(source, X, y, Xtest), theta_T)
            gap = float(np.sqrt(np.mean((res.net(Xtest) - kernel_fit(source, X, y, Xtest)) ** 2)))
            axes[0].plot([n], [r_gd], marker, markersize=9)
            rows.append(
                {
                    "angle_deg": deg,
                    "n": n,
                    "method": "GD of the network from source weights (draw 0)",
                    "mean": r_gd,
                    "kernel_risk_same_draw": r_k,
                    "rms_prediction_gap": gap,
                    "gd_steps": res.steps,
                    "train_loss": res.loss,
                }
            )
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("target samples n")
    axes[0].set_ylabel("target risk E (f(x) - x.theta_T)^2")
    axes[0].set_title(
        f"d={d}, width {m}; x, +: GD of the network (angle 30, 90); source risk {src_risk:.1e}", fontsize=9
    )
    axes[0].legend(fontsize=7)
    dsq = [float(2 - 2 * np.cos(np.deg2rad(a))) for a in angles]
    axes[1].plot(dsq, at40["finetune"], "o-", label="fine-tune (NTK at source weights)")
    axes[1].plot(dsq, at40["init kernel + source start"], "s--", label="NTK at init, start at f_S")
    axes[1].axhline(scratch[ns.index(40)].mean, color="gray", linestyle=":", label="scratch")
    axes[1].set_xlabel("||theta_T - theta_S||^2")
    axes[1].set_ylabel("target risk at n = 40")
    axes[1].set_title(f"source weights moved {moved:.1%} from init", fontsize=9)
    axes[1].legend(fontsize=8)
    for r in rows:
        r["source_risk"] = src_risk
        r["relative_weight_change"] = moved
    return fig, rows
