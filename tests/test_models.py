"""Tests of the model zoo: the EfficientNet-Lite weight mapping is exact, the
model interface holds for every kind of spec, bad specs give one clear line."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from lqf.errors import LqfError
from lqf.models import TransferModel, build_model
from lqf.models.efficientnet_lite import VARIANTS, build_timm_lite, original_state_dict, weights_path

from .conftest import tiny_net


def _sample_photos(size: int) -> torch.Tensor:
    """scikit-learn's two sample photographs, resized, scaled to [-1, 1]."""
    from sklearn.datasets import load_sample_images

    imgs = [torch.tensor(im).permute(2, 0, 1)[None].float() for im in load_sample_images().images]
    x = torch.cat(
        [nn.functional.interpolate(im, size=(size, size), mode="bilinear", antialias=True) for im in imgs]
    )
    return x / 127.5 - 1.0


def _installed(name: str) -> bool:
    return importlib.util.find_spec(VARIANTS[name][0].replace("-", "_")) is not None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_timm_mapping_gives_identical_logits_to_the_original_architecture(name: str) -> None:
    """The shipped weights loaded into timm's architecture reproduce the logits
    of the architecture they were published with, exactly, on real photos."""
    if not _installed(name):
        pytest.skip(f"{VARIANTS[name][0]} not installed")
    original = pytest.importorskip("efficientnet_lite_pytorch")
    reference = original.EfficientNet.from_pretrained(
        name.replace("_", "-"), weights_path=weights_path(name)
    ).eval()
    ours = build_timm_lite(name).eval()
    x = _sample_photos(VARIANTS[name][1])
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # real ImageNet weights: the flower photo is a daisy (class 985) for lite0
    if name == "efficientnet_lite0":
        assert got.argmax(1)[1].item() == 985


def test_mapping_checks_every_shape() -> None:
    import timm

    source = original_state_dict("efficientnet_lite0")
    wrong = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(ValueError):
        from lqf.models.efficientnet_lite import to_timm_state_dict

        to_timm_state_dict(source, wrong)


def test_transfer_model_interface() -> None:
    model = build_model("efficientnet_lite0", num_classes=7)
    assert isinstance(model, TransferModel)
    assert model.num_features == 1280 and model.input_spec.size == 224
    assert model.input_spec.mean == (0.5, 0.5, 0.5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.embed(x)
        logits = model(x)
        assert feats.shape == (2, 1280) and logits.shape == (2, 7)
        torch.testing.assert_close(logits, model.head(feats))
        # [0, 1] images are mapped to [-1, 1] before the backbone
        torch.testing.assert_close(model.normalize(torch.ones(1, 3, 1, 1)), torch.ones(1, 3, 1, 1))
    names = [n for n, _ in model.units()]
    assert names[0] == "features.conv_stem" and names[-1] == "head"
    assert "features.blocks.6.0" in names
    assert sum(p.numel() for _, m in model.units() for p in m.parameters()) == sum(
        p.numel() for p in model.parameters()
    )


def test_head_initialisation_is_seeded_and_leaves_global_rng_alone() -> None:
    model = build_model("efficientnet_lite0", num_classes=3)
    state = torch.random.get_rng_state()
    model.reset_head(4, generator=torch.Generator().manual_seed(1))
    first = model.head.weight.clone()
    model.reset_head(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, model.head.weight)
    assert first.abs().max() <= 1280**-0.5


def test_torchvision_and_timm_architectures_without_weights() -> None:
    tv = build_model("torchvision:resnet18", 4, pretrained=False)
    assert tv.num_features == 512 and tv(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    assert [n for n, _ in tv.units()][-3:] == ["features.layer4.0", "features.layer4.1", "head"]
    tm = build_model("timm:resnet18", 4, pretrained=False)
    assert tm.num_features == 512 and tm(torch.rand(1, 3, 32, 32)).shape == (1, 4)


def test_file_spec_full_module_and_state_dict(tmp_path) -> None:
    path = tmp_path / "net.pt"
    net = tiny_net()
    torch.save(net, path)
    model = build_model(f"file:{path}", 3)
    assert model.num_features == 16
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = net[:-1].eval()(model.normalize(x))
        torch.testing.assert_close(model.embed(x), expected)

    import timm

    ref = timm.create_model("resnet18", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "sd.pt")
    loaded = build_model(f"file:{tmp_path / 'sd.pt'}#timm:resnet18", 2)
    torch.testing.assert_close(loaded.features.conv1.weight, ref.conv1.weight)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("resnet", "unknown model 'resnet'; valid: efficientnet_lite0"),
        ("timm:", "unknown model"),
        ("timm:not_a_model_xyz", "unknown timm model 'not_a_model_xyz'"),
        ("torchvision:not_a_model", "unknown torchvision model"),
        ("timm:resnet18", "could not get pretrained weights for timm:resnet18"),
        ("torchvision:resnet18", "could not get pretrained weights for torchvision:resnet18"),
        ("file:/no/such/file.pt", "does not exist"),
    ],
)
def test_bad_model_specs_give_one_clear_line(spec: str, fragment: str) -> None:
    with pytest.raises(LqfError) as info:
        build_model(spec, 3)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_offline_error_names_the_offline_models() -> None:
    with pytest.raises(LqfError, match="efficientnet_lite0"):
        build_model("timm:resnet18", 3)


def test_an_unanswering_hub_is_asked_once_and_never_waited_for(monkeypatch) -> None:
    """Without a network: the hub client is switched to its cache before timm asks it (no retries),
    a torchvision download that is not cached is refused before it starts; one line each."""
    import huggingface_hub.constants
    import torchvision

    from lqf.models import hub

    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "reachable", lambda host, *a, **k: asked.append(host) or False)
    with pytest.raises(LqfError, match="the hub does not answer and they are not cached") as info:
        build_model("timm:resnet18", 3)
    assert asked == ["huggingface.co"] and huggingface_hub.constants.HF_HUB_OFFLINE
    assert "\n" not in str(info.value)

    def never(*args, **kwargs):
        raise AssertionError("no download may start")

    monkeypatch.setattr(torchvision.models, "get_model", never)
    with pytest.raises(LqfError, match="download.pytorch.org does not answer"):
        build_model("torchvision:resnet18", 3)


def test_state_dict_needs_an_architecture(tmp_path) -> None:
    torch.save(tiny_net().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(LqfError, match="needs an architecture"):
        build_model(f"file:{tmp_path / 'sd.pt'}", 3)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(LqfError, match="could not read model file"):
        build_model(f"file:{tmp_path / 'junk.pt'}", 3)


def test_wrap_any_module_and_fit_it() -> None:
    import torchvision

    from lqf.config import FitConfig
    from lqf.models import wrap_module
    from lqf.runs.fit import fit

    net = torchvision.models.mobilenet_v3_small(num_classes=7)
    model = wrap_module(net, 3)
    assert model.num_features == 1024 and model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    result = fit(
        FitConfig(data="digits", method="linear-probe", image_size=32, shots=3, val_per_class=2),
        model=model,
        quiet=True,
    )
    assert result.model is model and model.head.out_features == 10
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
