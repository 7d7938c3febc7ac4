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


def plot_confusion(table: list[list[int]], classes: list[str], path: str, title: str = "") -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts and row shares."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(table, dtype=float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    c = len(classes)
    size = max(4.0, 0.45 * c + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if counts[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(c), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(c), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_reliability(
    bins: list[dict[str, float]], path: str, title: str = "", ece: float | None = None
) -> None:
    """Reliability diagram: accuracy against confidence per bin of the top probability, with the
    share of images per bin below."""
    plt = _pyplot()
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(4.6, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    mids = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    filled = [(m, b) for m, b in zip(mids, bins, strict=True) if b["count"]]
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
    ax.bar(
        [m for m, _ in filled],
        [b["accuracy"] for _, b in filled],
        width=width * 0.9,
        alpha=0.8,
        label="accuracy",
    )
    ax.plot(
        [m for m, _ in filled],
        [b["confidence"] for _, b in filled],
        "o",
        markersize=3,
        color="black",
        label="confidence",
    )
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    total = sum(b["count"] for b in bins) or 1
    ax_count.bar(mids, [b["count"] / total for b in bins], width=width * 0.9, color="grey")
    ax_count.set_xlabel("confidence (top probability)")
    ax_count.set_ylabel("share")
    ax_count.set_xlim(0, 1)
    ax.set_title(title + (f"\nECE {ece:.3f}" if ece is not None else ""), fontsize=8)
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
