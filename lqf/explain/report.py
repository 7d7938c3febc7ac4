"""What ``lqf explain`` writes: image grids a person reads, and the numbers behind them.

* ``influence_report``: for one image, the training images that help and that hurt its
  predicted class most (``f(x) - f_{-i}(x)`` on that class: removing a helpful one lowers the
  score), as a PNG grid and a JSON with every training image's score;
* ``mislabel_report``: the training images whose label the model trained without them
  disputes most (leave-one-out margin), as a PNG grid and a CSV (index, given label,
  leave-one-out label, score, self-influence).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import torch

from lqf.io import atomic_write, write_json


def _image(train, i: int):
    x = train.images[i]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def _grid(title: str, panels: list[tuple[Any, str]], path: str, columns: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, text) in zip(axes.flat, panels, strict=False):
        if img is not None:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(text, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda tmp: open(tmp, "wb").write(buffer.getvalue()))


def influence_report(ex, image: torch.Tensor, name: str, out: str, top: int = 6, label: int | None = None):
    """Write ``influence-NAME.png`` and ``.json`` for one image ``(3, S, S)``; returns the JSON dict."""
    classes = ex.train.classes
    scores = ex.predict(image[None])[0]
    predicted = int(scores.argmax())
    influence = ex.influence(image[None])[0]  # (N, C)
    representer = ex.representer(image[None])[0]
    on = influence[:, predicted]
    order = torch.argsort(on, descending=True)
    helpful = [int(i) for i in order[:top]]
    harmful = [int(i) for i in order.flip(0)[:top]]
    source = ex.train.index

    def entry(i: int) -> dict[str, Any]:
        return {
            "index": i,
            "source_index": None if source is None else int(source[i]),
            "label": classes[int(ex.labels[i])],
            "influence": float(on[i]),
            "representer": float(representer[i, predicted]),
        }

    report = {
        "image": name,
        "predicted": classes[predicted],
        "label": None if label is None else classes[label],
        "scores": {classes[c]: float(scores[c]) for c in range(len(classes))},
        "method": ex.kind,
        "explain_consistency": ex.consistency,
        "helpful": [entry(i) for i in helpful],
        "harmful": [entry(i) for i in harmful],
        "influence_on_predicted": [float(v) for v in on],
        "what": "influence: f(x) - f_{-i}(x) on the predicted class (removing a helpful image lowers it); "
        "representer: the image's share of the score",
    }
    write_json(os.path.join(out, f"influence-{name}.json"), report)
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    panels = [(img, f"{name}\npredicted {classes[predicted]}")]
    panels += [
        (_image(ex.train, i), f"helps {on[i]:+.3f}\n#{i} {classes[int(ex.labels[i])]}") for i in helpful
    ]
    panels += [(None, "")]  # the second row, harmful images, under the helpful ones
    panels += [
        (_image(ex.train, i), f"hurts {on[i]:+.3f}\n#{i} {classes[int(ex.labels[i])]}") for i in harmful
    ]
    _grid(
        f"most helpful and most harmful training images for {name} (exact leave-one-out, {ex.kind})",
        panels,
        os.path.join(out, f"influence-{name}.png"),
        columns=top + 1,
    )
    return report


def mislabel_report(ex, out: str, top: int = 24) -> list[dict[str, Any]]:
    """Write ``mislabels.png`` and ``mislabels.csv`` (every training image, most suspect first)."""
    classes = ex.train.classes
    scores = ex.mislabel_scores()
    loo = ex.loo_predictions().argmax(1)
    self_influence = ex.self_influence()
    order = torch.argsort(scores, descending=True)
    source = ex.train.index
    rows = [
        {
            "index": int(i),
            "source_index": None if source is None else int(source[i]),
            "given_label": classes[int(ex.labels[i])],
            "loo_label": classes[int(loo[i])],
            "score": float(scores[i]),
            "self_influence": float(self_influence[i]),
        }
        for i in order
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out, "mislabels.csv"), lambda tmp: open(tmp, "w").write(buffer.getvalue()))
    panels = [
        (
            _image(ex.train, r["index"]),
            f"#{r['index']} {r['given_label']}\nLOO: {r['loo_label']} {r['score']:+.2f}",
        )
        for r in rows[:top]
    ]
    _grid(
        "training images whose label the model trained without them disputes most "
        "(given label, leave-one-out label, margin)",
        panels,
        os.path.join(out, "mislabels.png"),
    )
    return rows
