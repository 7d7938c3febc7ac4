"""Linear-regression figures: fine-tuning vs scratch vs ridge, and the similarity measure."""

from __future__ import annotations

from typing import Any

import numpy as np

from lqf.theory.expectations import (
    Covariance,
    deterministic_risk,
    estimator,
    isotropic_expected_risk,
    monte_carlo_risk,
    similarity_measure,
)
from lqf.theory.figures import Rows, register
from lqf.theory.figures._common import band, unit


@register(
    "linear-isotropic", "isotropic Sigma: E risk vs n, fine-tuning / scratch / ridge, MC vs closed form"
)
def linear_isotropic(plt: Any) -> tuple[Any, Rows]:
    d, noise, draws = 50, 0.2, 1000
    rng = np.random.default_rng(0)
    theta_T = unit(rng.standard_normal(d))
    ns = [2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 47, 55, 60, 75, 100]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    rows: Rows = []
    for ax, dist in zip(axes, (0.5, 1.5), strict=True):
        xi = rng.standard_normal(d)
        theta_S = theta_T + dist * unit(xi - (xi @ theta_T) * theta_T)
        for k, method in enumerate(("finetune", "scratch", "ridge")):
            fit = estimator(method, theta_S)
            est = [
                monte_carlo_risk(fit, n, Covariance.isotropic(d), theta_T, noise=noise, draws=draws, seed=n)
                for n in ns
            ]
            band(ax, ns, est, f"{method} (MC)", ["-o", "-s", "-^"][k])
            start_sq = {"finetune": dist**2, "scratch": 1.0}.get(method)
            for n, e in zip(ns, est, strict=True):
                closed = isotropic_expected_risk(n, d, start_sq, noise) if start_sq is not None else None
                rows.append(
                    {
                        "dist": dist,
                        "method": method,
                        "n": n,
                        "mc_mean": e.mean,
                        "mc_ci95": e.half_width,
                        "closed_form": closed,
                        "closed_in_ci": None if closed is None else e.contains(closed),
                    }
                )
            if start_sq is not None:
                closed = [isotropic_expected_risk(n, d, start_sq, noise) for n in ns]
                ax.plot(ns, closed, "k:", linewidth=1)
        ax.axvline(d, color="gray", linewidth=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("target samples n")
        ax.set_title(f"d={d}, noise {noise}, ||theta_T||=1, ||theta_T-theta_S||={dist}", fontsize=9)
    axes[0].set_ylabel("excess risk (dotted: closed form)")
    axes[0].legend(fontsize=8)
    return fig, rows


def _aligned_delta(cov: Covariance, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = np.zeros(cov.d)
    c[idx] = rng.standard_normal(idx.size)
    return cov.basis @ unit(c)


@register(
    "linear-similarity", "power-law Sigma: equal ||theta_T - theta_S||, different measure, different risk"
)
def linear_similarity(plt: Any) -> tuple[Any, Rows]:
    d, noise, draws = 100, 0.1, 200
    cov = Covariance.power_law(d, 1.5, seed=0)
    rng = np.random.default_rng(1)
    theta_S = cov.basis @ unit(rng.standard_normal(d)) * 2.0
    ns = [2, 5, 10, 20, 30, 50, 70, 90]
    cases = {
        "delta in top-10 eigendirections": np.arange(10),
        "delta in bottom-50 eigendirections": np.arange(50, 100),
        "delta in random direction": np.arange(100),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows: Rows = []
    for k, (label, idx) in enumerate(cases.items()):
        theta_T = theta_S + _aligned_delta(cov, idx, rng)
        est = [
            monte_carlo_risk(
                estimator("finetune", theta_S), n, cov, theta_T, noise=noise, draws=draws, seed=100 + n
            )
            for n in ns
        ]
        det = [deterministic_risk(n, theta_S, theta_T, cov, noise) for n in ns]
        band(axes[0], ns, est, label, ["-o", "-s", "-^"][k])
        axes[0].plot(ns, det, "k:", linewidth=1)
        for n, e, v in zip(ns, est, det, strict=True):
            rows.append(
                {
                    "case": label,
                    "method": "finetune",
                    "n": n,
                    "mc_mean": e.mean,
                    "mc_ci95": e.half_width,
                    "deterministic_equivalent": v,
                    "similarity_measure": similarity_measure(n, theta_S, theta_T, cov),
                    "delta_norm": float(np.linalg.norm(theta_T - theta_S)),
                }
            )
        if k == 0:
            scratch = [
                monte_carlo_risk(
                    estimator("scratch", theta_S), n, cov, theta_T, noise=noise, draws=draws, seed=100 + n
                )
                for n in ns
            ]
            band(axes[0], ns, scratch, "from scratch (top-10 target)", "--", color="gray")
            for n, e in zip(ns, scratch, strict=True):
                rows.append(
                    {
                        "case": label,
                        "method": "scratch",
                        "n": n,
                        "mc_mean": e.mean,
                        "mc_ci95": e.half_width,
                        "deterministic_equivalent": deterministic_risk(n, np.zeros(d), theta_T, cov, noise),
                    }
                )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("target samples n")
    axes[0].set_ylabel("excess risk (dotted: deterministic equivalent)")
    axes[0].set_title("||theta_T-theta_S||=1 in all cases; eigenvalues ~ i^-1.5", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].semilogy(np.arange(1, d + 1), cov.eigs, "k-")
    for n, color in ((10, "tab:red"), (50, "tab:blue")):
        axes[1].axhline(_kappa(n, cov), linestyle=":", color=color, label=f"kappa_n, n={n}")
    axes[1].set_xlabel("eigen-direction i")
    axes[1].set_ylabel("lambda_i")
    axes[1].set_title("directions with lambda_i << kappa_n are unseen", fontsize=9)
    axes[1].legend(fontsize=8)
    return fig, rows


def _kappa(n: int, cov: Covariance) -> float:
    from lqf.theory.expectations import unseen_scale

    return unseen_scale(n, cov.eigs)


@register("linear-measure", "60 random task pairs: MC risk against ||theta_T - theta_S||^2 and against S_n")
def linear_measure(plt: Any) -> tuple[Any, Rows]:
    d, n, noise, draws, pairs = 100, 20, 0.1, 200, 60
    cov = Covariance.power_law(d, 1.5, seed=0)
    rng = np.random.default_rng(2)
    rows: Rows = []
    for k in range(pairs):
        theta_S = cov.basis @ rng.standard_normal(d) / np.sqrt(d)
        tilt = rng.uniform(-2.0, 2.0)  # delta ~ Sigma^{tilt/2} g: from tail-heavy to head-heavy
        c = cov.eigs ** (tilt / 2) * rng.standard_normal(d)
        delta = cov.basis @ (unit(c) * rng.uniform(0.3, 2.0))
        theta_T = theta_S + delta
        est = monte_carlo_risk(
            estimator("finetune", theta_S), n, cov, theta_T, noise=noise, draws=draws, seed=k
        )
        rows.append(
            {
                "pair": k,
                "tilt": tilt,
                "delta_sq": float(delta @ delta),
                "delta_sigma_sq": float(delta @ cov.matrix @ delta),
                "similarity_measure": similarity_measure(n, theta_S, theta_T, cov),
                "deterministic_risk": deterministic_risk(n, theta_S, theta_T, cov, noise),
                "mc_mean": est.mean,
                "mc_ci95": est.half_width,
            }
        )
    risk = np.array([r["mc_mean"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in zip(
        axes,
        ("delta_sq", "delta_sigma_sq", "deterministic_risk"),
        (
            "||theta_T - theta_S||^2",
            "||theta_T - theta_S||_Sigma^2",
            "S_n + variance (deterministic equivalent)",
        ),
        strict=True,
    ):
        xs = np.array([r[key] for r in rows])
        corr = _spearman(xs, risk)
        ax.errorbar(xs, risk, yerr=[r["mc_ci95"] for r in rows], fmt="o", markersize=3)
        if key == "deterministic_risk":
            lim = [min(xs.min(), risk.min()), max(xs.max(), risk.max())]
            ax.plot(lim, lim, "k:", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_title(f"Spearman rank correlation {corr:.2f}")
        for r in rows:
            r[f"spearman_{key}"] = corr
    axes[0].set_ylabel(f"E risk of fine-tuning (MC, n={n}, d={d})")
    return fig, rows


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])
