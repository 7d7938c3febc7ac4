"""Shared fixtures: a tiny model saved as ``file:PATH`` and a tiny image folder,
so that end-to-end tests of fit / resume / evaluate / predict run in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

#: devices a test can be parametrized over: the CPU, and CUDA where a device is visible
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    ),
]


def tiny_net(seed: int = 0) -> nn.Module:
    """A 2-layer CNN with BatchNorm and dropout, ending in ``nn.Linear``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(16, 5),
    )


@pytest.fixture(autouse=True)
def _offline_hubs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub downloads in tests: fail at once instead of retrying."""
    import urllib.error

    import torch.hub

    def no_download(*args, **kwargs):
        raise urllib.error.URLError("downloads are disabled in tests")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    import torchvision.models._api

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)


@pytest.fixture(scope="session")
def tiny_model_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``file:PATH`` of a saved tiny CNN."""
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    torch.save(tiny_net(), path)
    return f"file:{path}"


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 12) -> Path:
    """``root/<class>/<i>.png``: each class a different mean colour plus noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3))
            base[..., c % 3] = 180
            pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")
