"""Plots written into run directories (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from typing import Any

from lqf.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(history: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Loss (left) and accuracy (right) per epoch, train and validation."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in history]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [r.get(f"{split}_{key}") for r in history]
            points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if history and len(history) == 1:
        ax_acc.set_title("single-step method: one point", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_comparison(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Bar chart of test accuracy per method, with training time annotated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
    names = [r["method"] for r in rows]
    accs = [100 * r["test_accuracy"] for r in rows]
    bars = ax.bar(names, accs, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2"][: len(rows)])
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"{100 * r['test_accuracy']:.1f}%\n{r['train_seconds']:.0f} s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, min(100, max(accs) * 1.2 + 5))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
