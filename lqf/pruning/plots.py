"""Plots of a pruning run: every evaluated configuration, and the chosen per-layer rates."""

from __future__ import annotations

from typing import Any

from lqf.io import atomic_write
from lqf.pruning.masks import Compression
from lqf.reports.plots import _pyplot


def plot_pareto(history: dict[str, Any], metrics: dict[str, Any], path: str, title: str = "") -> None:
    """Validation-subset accuracy against compression of every trial (colour: round), the
    Pareto front, the configuration chosen in each round (black ring) and the final model
    after fine-tuning (star; its accuracy is on the whole validation split)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    trials = history["trials"]
    if trials:
        rounds = sorted({t["round"] for t in trials})
        cmap = plt.get_cmap("viridis", max(2, len(rounds)))
        for i, r in enumerate(rounds):
            pts = [t for t in trials if t["round"] == r]
            ax.scatter(
                [t["compression"] for t in pts],
                [100 * t["accuracy"] for t in pts],
                s=14,
                color=cmap(i),
                alpha=0.75,
                label=f"round {r} trials",
            )
        front = _pareto_front([(t["compression"], t["accuracy"]) for t in trials])
        ax.plot(
            [c for c, _ in front], [100 * a for _, a in front], "-", color="grey", lw=1, label="Pareto front"
        )
        chosen = [r for r in history["rounds"] if "accuracy" in r]
        ax.scatter(
            [r["compression"] for r in chosen],
            [100 * r["accuracy"] for r in chosen],
            s=70,
            facecolors="none",
            edgecolors="black",
            label="chosen per round",
        )
    ref = history["reference"]
    ax.axhline(100 * ref["val_subset_accuracy"], color="C3", ls=":", lw=1, label="unpruned (val subset)")
    ax.scatter(
        [metrics["compression"]],
        [100 * metrics["val_accuracy"]],
        marker="*",
        s=180,
        color="C3",
        zorder=5,
        label=f"final: {metrics['compression']:.1f}x, {100 * metrics['val_accuracy']:.1f}% val",
    )
    ax.set_xscale("log")
    ax.set_xlabel("compression (prunable parameters / kept)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_rates(counts: Compression, path: str, title: str = "") -> None:
    """Fraction of weights pruned per layer (bars coloured by search group)."""
    plt = _pyplot()
    layers = counts.layers
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(layers) + 2), 4.0))
    groups = list(dict.fromkeys(c.group for c in layers))
    cmap = plt.get_cmap("tab20", max(2, len(groups)))
    colors = [cmap(groups.index(c.group)) for c in layers]
    ax.bar(range(len(layers)), [100 * c.fraction_pruned for c in layers], color=colors)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([c.name.removeprefix("features.") for c in layers], rotation=90, fontsize=6)
    ax.set_ylabel("weights pruned (%)")
    ax.set_ylim(0, 100)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(groups))]
    ax.legend(handles, groups, fontsize=6, ncol=2, loc="upper left")
    ax.set_title(f"{title}: {counts.rate:.2f}x, {counts.kept:,} of {counts.total:,} kept", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (compression, accuracy), sorted by compression.

    >>> _pareto_front([(1, 0.9), (2, 0.8), (2, 0.7), (3, 0.85), (4, 0.5)])
    [(1, 0.9), (3, 0.85), (4, 0.5)]
    """
    front: list[tuple[float, float]] = []
    for c, a in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((c, a))
    return sorted(front)
