"""Fine-Pruning: masks that hold through training, exact bookkeeping, the packed
checkpoint, resuming a search, and one clear line for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lqf.cli.main import main
from lqf.errors import LqfError
from lqf.pruning import (
    MaskSet,
    Objective,
    PruneOptions,
    find_prunable,
    global_masks,
    groups_of,
    layer_masks,
    load_packed,
    magnitude_mask,
    save_packed,
)
from lqf.pruning.masks import predicted_compression

from .conftest import DEVICES, tiny_net, write_image_folder


def _tiny_layers(include_head: bool = True, grouping: str = "layer"):
    net = tiny_net()
    # name the last layer "head" like a TransferModel, so include_head has something to act on
    model = nn.Sequential()
    model.add_module("features", net[:-1])
    model.add_module("head", net[-1])
    return model, find_prunable(model, include_head=include_head, grouping=grouping)


# -- masks ------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), theta=st.floats(0, 1), seed=st.integers(0, 10_000))
def test_magnitude_mask_keeps_exactly_the_largest(n: int, theta: float, seed: int) -> None:
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    w[: n // 3] = 0.0  # ties, as pruned weights have
    mask = magnitude_mask(w, theta)
    k = int(round(theta * n))
    assert int((~mask).sum()) == k
    # reference: a stable numpy sort of |w|
    order = np.argsort(w.abs().numpy(), kind="stable")
    expected = np.ones(n, dtype=bool)
    expected[order[:k]] = False
    assert np.array_equal(mask.numpy(), expected)


def test_global_masks_use_one_threshold_and_exact_count() -> None:
    _, layers = _tiny_layers()
    masks = global_masks(layers, 0.7)
    total = sum(x.numel for x in layers)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.7 * total)
    kept = torch.cat([x.module.weight.abs().flatten()[masks[x.name].flatten()] for x in layers])
    dropped = torch.cat([x.module.weight.abs().flatten()[~masks[x.name].flatten()] for x in layers])
    assert kept.min() >= dropped.max()
    # layers get different rates: one threshold is not one rate
    rates = {round(float((~m).float().mean()), 3) for m in masks.values()}
    assert len(rates) > 1


def test_compression_bookkeeping_is_exact() -> None:
    model, layers = _tiny_layers(include_head=True)
    sizes = {x.name: x.numel for x in layers}
    assert sizes == {"features.0": 3 * 8 * 9, "features.3": 8 * 16 * 9, "head": 16 * 5}
    theta = {"features.0": 0.5, "features.3": 0.9, "head": 0.25}
    masks = MaskSet(layers)
    masks.update(layer_masks(layers, theta))
    counts = masks.counts()
    kept = {"features.0": 216 - 108, "features.3": 1152 - round(0.9 * 1152), "head": 80 - 20}
    assert {c.name: c.kept for c in counts.layers} == kept
    assert counts.total == 216 + 1152 + 80 and counts.kept == sum(kept.values())
    assert counts.rate == pytest.approx(1448 / sum(kept.values()), rel=1e-12)
    assert counts.removed == pytest.approx(1 - sum(kept.values()) / 1448, rel=1e-12)
    predicted = predicted_compression(layers, theta)
    assert [(c.name, c.kept) for c in predicted.layers] == [(c.name, c.kept) for c in counts.layers]
    # the weights themselves: exactly the masked entries are zero (the tiny net has no exact zeros)
    for x in layers:
        assert int((x.module.weight != 0).sum()) == kept[x.name]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    ],
    ids=["adamw-weight-decay", "sgd-momentum"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_masks_hold_through_optimizer_steps(make_opt, device: str) -> None:
    model, layers = _tiny_layers(include_head=True)
    model.to(device)
    opt = make_opt(model.parameters())
    x, y = torch.randn(16, 3, 12, 12, device=device), torch.randint(0, 5, (16,), device=device)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):  # momentum and Adam moments build up on every weight first
        step()
    masks = MaskSet(layers)
    masks.update(layer_masks(layers, {x.group: 0.6 for x in layers}))
    before = {x.name: x.module.weight.detach().clone() for x in layers}
    handle = masks.attach(opt)
    for _ in range(5):
        step()
    for layer in layers:
        w, m = layer.module.weight.detach(), masks.masks[layer.name]
        assert torch.all(w[~m] == 0), layer.name
        assert not torch.equal(w[m], before[layer.name][m]), "kept weights should train"
        assert torch.all(layer.module.weight.grad[~m] == 0)
    handle.remove()
    step()  # detached: the hooks are gone
    assert any(torch.any(x.module.weight.detach()[~masks.masks[x.name]] != 0) for x in layers)


def test_stage_grouping_of_efficientnet_lite0() -> None:
    from lqf.models import build_model

    model = build_model("efficientnet_lite0", 10, pretrained=False)
    layers = find_prunable(model)
    groups = groups_of(layers)
    assert len(layers) == 49 and "head" not in [x.name for x in layers]
    assert groups == [
        "features.conv_stem",
        "depthwise",
        "features.blocks.0",
        "features.blocks.1",
        "features.blocks.2",
        "features.blocks.3",
        "features.blocks.4",
        "features.blocks.5",
        "features.blocks.6",
        "features.conv_head",
    ]
    assert all(x.depthwise == (x.group == "depthwise") for x in layers)
    assert sum(x.numel for x in layers) == 3_341_792 - 12_800


def test_objective_chooses_most_compressed_feasible() -> None:
    obj = Objective(reference=0.90, target_drop=1.0)
    trials = [
        {"accuracy": 0.895, "removed": 0.5, "value": 0.5},
        {"accuracy": 0.889, "removed": 0.6, "value": 0.6},  # drop 1.1 points: infeasible
        {"accuracy": 0.891, "removed": 0.55, "value": 0.55},
    ]
    assert obj.best(trials) is trials[2]
    assert Objective(reference=0.9, gamma=0.5).best(trials) is trials[1]
    assert (
        Objective(reference=0.99, target_drop=0.1).best(trials) is trials[0]
    )  # none feasible: most accurate


# -- the packed checkpoint -----------------------------------------------------------------------------
def test_packed_checkpoint_round_trips_and_is_smaller(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    x = torch.rand(4, 3, 10, 10)
    model(x)
    model.eval()
    layers = find_prunable(model, grouping="layer")
    masks = MaskSet(layers)
    masks.update(layer_masks(layers, {x.group: 0.8 for x in layers}))
    dense = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense)
    packed = tmp_path / "packed.safetensors"
    size = save_packed(str(packed), model.state_dict(), masks.state_dict())
    assert size == packed.stat().st_size
    assert size < dense.stat().st_size / 3  # 80 % pruned: 1/8 + 0.2 * 4 bytes per weight, vs 4
    restored = load_packed(str(packed))
    expected = model(x)
    for k, v in model.state_dict().items():
        assert torch.equal(restored[k], v), k
    model.load_state_dict(restored)
    assert torch.equal(model(x), expected)
    half = tmp_path / "half.safetensors"
    assert save_packed(str(half), model.state_dict(), masks.state_dict(), half=True) < size
    model.load_state_dict(load_packed(str(half)))
    torch.testing.assert_close(model(x), expected, atol=2e-2, rtol=1e-2)


# -- the loop: resuming without repeating finished trials --------------------------------------------
def _tiny_setup(tmp_path: Path):
    from lqf.config import FitConfig
    from lqf.data import load_data
    from lqf.models import build_model

    weights = tmp_path / "tiny.pt"
    torch.save(tiny_net(), weights)
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=10, size=12)
    config = FitConfig(model=f"file:{weights}", data=f"imagefolder:{folder}", image_size=12, val_per_class=3)
    data = load_data(config.data, image_size=12, val_per_class=3, seed=0)
    return config, data, lambda: build_model(config.model, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("space", ["threshold", "fraction"])
def test_interrupted_prune_resumes_without_repeating_trials(tmp_path: Path, monkeypatch, space) -> None:
    from lqf.pruning import finepruning, measure
    from lqf.runs import RunDirectory

    config, data, make_model = _tiny_setup(tmp_path)
    options = PruneOptions(
        rounds=2, trials=4, startup_trials=2, warm_start=1, round_epochs=1, final_epochs=1, space=space
    )
    calls = {"n": 0, "stop_at": 6}
    original = measure.MaskedAccuracy.__call__

    def counted(self, theta):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return original(self, theta)

    monkeypatch.setattr(measure.MaskedAccuracy, "__call__", counted)
    run = RunDirectory(str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        finepruning.prune(make_model(), data, config, options, run=run, quiet=True)
    finished = json.loads((tmp_path / "run" / "history.json").read_text())["trials"]
    assert len(finished) == 5  # trials 1-5 finished, the 6th was interrupted
    calls["n"], calls["stop_at"] = 0, -1
    result = finepruning.prune(make_model(), data, config, options, run=run, resume=True, quiet=True)
    assert calls["n"] == 2 * 4 - 5  # only the unfinished trials are evaluated
    trials = result.history["trials"]
    assert [(t["round"], t["number"]) for t in trials] == [(r, i) for r in (1, 2) for i in range(4)]
    assert trials[:5] == finished
    carried = result.history["rounds"][0]["theta"]
    if space == "threshold":  # the group factors carry over, the step restarts in the middle
        carried = {**carried, "step": options.max_step**0.5}
    assert trials[4]["warm"] and trials[4]["theta"] == carried
    m = result.metrics
    assert m["packed_roundtrip_exact"] and m["packed_file_bytes"] > 0
    assert m["params_kept"] == result.masks.counts().kept
    for name in ("pareto.png", "rates.png", "model.packed.safetensors", "metrics.json"):
        assert (tmp_path / "run" / name).is_file()


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_one_shot_baselines_reach_the_target_compression(tmp_path: Path, strategy: str) -> None:
    from lqf.pruning.finepruning import prune

    config, data, make_model = _tiny_setup(tmp_path)
    options = PruneOptions(strategy=strategy, target_compression=4, rounds=1, round_epochs=1, final_epochs=0)
    result = prune(make_model(), data, config, options, quiet=True)
    assert result.metrics["compression"] == pytest.approx(4, rel=1e-2)
    assert result.metrics["trials"] == 0
    for layer in result.masks.layers:
        assert torch.all(layer.module.weight[~result.masks.masks[layer.name]] == 0)


# -- bad input: one line ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--target-drop", "-1"], ["--target-drop must be >= 0", "-1"]),
        (["--target-drop", "1", "--gamma", "0.5"], ["either --target-drop or --gamma"]),
        (["--strategy", "uniform"], ["needs --target-compression"]),
        (["--round-drop", "-0.5"], ["--round-drop must be >= 0", "-0.5"]),
        (["--back-off", "-1"], ["--back-off must be >= 0", "-1"]),
        (["--select-val", "-1"], ["--select-val must be >= 0", "-1"]),
        (["--select-val", "1"], ["--select-val 1 leaves no validation image of class", "--extra-val"]),
        (["--max-step", "1"], ["--max-step must be a number > 1", "got 1.0"]),
        (["--distill", "1.5"], ["--distill must be a weight in [0, 1]", "1.5"]),
        (["--distill", "0.5", "--distill-temperature", "0"], ["--distill-temperature must be a positive"]),
        (["--space", "cube"], ["--space", "invalid choice", "'cube'"]),
        (["--exclude", "features.9"], ["'features.9'", "not a prunable layer", "features.0"]),
    ],
)
def test_bad_prune_arguments_give_one_line(tiny_model_spec, tmp_path, capsys, flags, fragments) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=6, size=12)
    args = ["prune", "--model", tiny_model_spec, "--data", f"imagefolder:{folder}", "--image-size", "12"]
    args += ["--val-per-class", "1", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"), *flags]
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lqf: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_from_run_refuses_a_different_split(tiny_model_spec, tmp_path, capsys) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=6, size=12)
    source = tmp_path / "ft"
    common = ["--data", f"imagefolder:{folder}", "--image-size", "12", "--val-per-class", "1", "--quiet"]
    assert main(["fit", "--model", tiny_model_spec, *common, "--epochs", "1", "--out", str(source)]) == 0
    code = main(["prune", "--from", str(source), "--seed", "3", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "--seed 3 differs from the --from run" in err
    # the device may differ from the --from run's, but must exist here
    code = main(["prune", "--from", str(source), "--device", "cuda:99", "--out", str(tmp_path / "q")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--device cuda:99" in lines[0], lines
    with pytest.raises(LqfError, match="exclude"):
        find_prunable(tiny_net(), exclude=["nope"])


def test_prune_can_validate_on_more_images_with_the_same_train_set(tiny_model_spec, tmp_path, capsys) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=10, size=12)
    source = tmp_path / "ft"
    common = ["--data", f"imagefolder:{folder}", "--image-size", "12", "--val-per-class", "1", "--quiet"]
    fit = ["fit", "--model", tiny_model_spec, *common, "--shots", "2", "--epochs", "1"]
    assert main([*fit, "--out", str(source)]) == 0
    prune = ["prune", "--from", str(source), "--strategy", "global", "--target-compression", "2", "--quiet"]
    prune += ["--rounds", "1", "--round-epochs", "1", "--final-epochs", "0"]
    assert main([*prune, "--extra-val", "2", "--out", str(tmp_path / "p")]) == 0
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_val"]) == (3 * 2, 3 * (1 + 2))  # same train, more val
    capsys.readouterr()
    code = main([*prune, "--extra-val", "9", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "lower --extra-val" in err, err


def test_trial_evaluation_leaves_the_model_untouched(tmp_path: Path) -> None:
    from lqf.pruning.measure import MaskedAccuracy, bn_batches

    config, data, make_model = _tiny_setup(tmp_path)
    model = make_model().eval()
    layers = find_prunable(model, grouping="layer")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure = MaskedAccuracy(model, layers, data.val, 64, "cpu", bn_batches(data, 8, 2, seed=0))
    accuracy = measure({x.group: 0.9 for x in layers})
    assert 0 <= accuracy <= 1 and measure.calls == 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training


def test_prune_cli_end_to_end(tiny_model_spec, tmp_path, capsys) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=6, size=12)
    out = tmp_path / "pruned"
    common = ["--data", f"imagefolder:{folder}", "--image-size", "12", "--val-per-class", "1", "--quiet"]
    args = ["prune", "--model", tiny_model_spec, *common, "--epochs", "1", "--rounds", "1", "--trials", "2"]
    code = main([*args, "--startup-trials", "1", "--final-epochs", "0", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "compression" in stdout and "packed" in stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["prune_options"]["trials"] == 2 and saved["source"] is None
    assert (out / "finetune" / "metrics.json").is_file()  # fine-tuned first, without --from
    metrics = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", str(out), "--quiet"]) == 0  # the pruned model is an ordinary run
    evaluation = json.loads(next(out.glob("evaluation-*.json")).read_text())
    assert evaluation["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    capsys.readouterr()
    code = main(["prune", "--resume", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already finished" in err


def test_global_starts_reproduce_global_pruning_per_layer() -> None:
    from lqf.pruning.masks import theta_for_compression
    from lqf.pruning.rounds import global_starts

    _, layers = _tiny_layers(include_head=True, grouping="layer")
    starts = global_starts(layers, 3, theta_max=1.0)
    assert len(starts) == 3
    expected = global_masks(layers, theta_for_compression(8.0))
    assert all(torch.equal(layer_masks(layers, starts[-1])[n], expected[n]) for n in expected)


# -- the threshold search space -----------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    step=st.floats(1.0, 6.0),
    scales=st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3),
    seed=st.integers(0, 1000),
)
def test_threshold_space_compression_is_exact_and_masks_only_grow(step, scales, seed) -> None:
    from lqf.pruning.spaces import STEP, ThresholdSpace

    torch.manual_seed(seed)
    _, layers = _tiny_layers(include_head=True, grouping="layer")
    for layer in layers:  # fresh weights, no ties
        nn.init.normal_(layer.module.weight)
    masks = MaskSet(layers)
    masks.update(global_masks(layers, 0.4))  # an earlier round pruned 40%
    before = masks.state_dict()
    space = ThresholdSpace(layers, max_step=8.0, group_factor=2.0)
    assert space.rate0 == pytest.approx(1 / 0.6, rel=1e-3)
    point = {STEP: step} | {g: s for g, s in zip(space.groups, scales, strict=True)}
    new = space.masks(point)
    # the exact count, without masks, equals the count of the masks
    assert [c.kept for c in space.compression(point).layers] == [int(new[x.name].sum()) for x in layers]
    # pruned weights stay pruned
    assert all(not torch.any(new[n] & ~before[n]) for n in before)
    # every layer's threshold separates kept from pruned magnitudes
    for x, thr in zip(layers, space.thresholds(point), strict=True):
        w = x.module.weight.detach().abs()
        assert torch.all(w[new[x.name]] > thr) and torch.all(w[~new[x.name]] <= thr)


def test_threshold_space_without_factors_is_global_pruning() -> None:
    from lqf.pruning.spaces import STEP, ThresholdSpace

    torch.manual_seed(0)
    _, layers = _tiny_layers(include_head=True, grouping="stage")
    for layer in layers:
        nn.init.normal_(layer.module.weight)
    total = sum(x.numel for x in layers)
    space = ThresholdSpace(layers, max_step=10.0)
    assert space.rate0 == 1.0
    for step in (1.0, 1.5, 4.0, 10.0):
        point = {STEP: step} | dict.fromkeys(space.groups, 0.0)
        keep = round(total / step)
        expected = global_masks(layers, 1 - keep / total)  # one threshold, exactly `keep` weights left
        got = space.masks(point)
        assert all(torch.equal(got[n], expected[n]) for n in expected), step
        assert space.compression(point).rate == pytest.approx(total / keep, rel=1e-12)
    assert space.identity() == {STEP: 1.0} | dict.fromkeys(space.groups, 0.0)
    assert all(torch.all(m) for m in space.masks(space.identity()).values())
    starts = space.starts(3)
    assert [p[STEP] for p in starts] == pytest.approx([1.25, 1.25 * 8**0.5, 10.0])
    # a carried point keeps its group factors; its step (relative to its own round) restarts
    carried = space.carry({STEP: 10.0} | dict.fromkeys(space.groups, 0.5))
    assert carried == {STEP: 10.0**0.5} | dict.fromkeys(space.groups, 0.5)


def test_a_threshold_round_prunes_what_its_trial_reported(tmp_path: Path) -> None:
    from lqf.pruning.finepruning import prune

    config, data, make_model = _tiny_setup(tmp_path)
    options = PruneOptions(
        rounds=2, trials=4, startup_trials=2, round_epochs=1, final_epochs=0, max_step=3, keep_best=False
    )
    result = prune(make_model(), data, config, options, quiet=True)
    assert options.space == "threshold"
    rounds, trials = result.history["rounds"], result.history["trials"]
    for r in rounds:
        chosen = next(t for t in trials if (t["round"], t["number"]) == (r["round"], r["number"]))
        assert r["compression"] == chosen["compression"] and r["space"] == "threshold"
    assert rounds[1]["compression"] >= rounds[0]["compression"]  # compression only grows
    assert result.masks.counts().rate == pytest.approx(rounds[-1]["compression"], rel=1e-12)


# -- keeping the best candidate, and the drop measured from the current model --------------------------
def _scripted_tune(monkeypatch, drops: list[float], seen: list[dict], stop_at: int = -1):
    """Replace fine-tuning by a scripted one: it shifts the kept weights (so that every phase's
    model differs), snapshots model and masks (before and after), and reports validation accuracy
    ``ref - drop``; the phase number ``stop_at`` is interrupted (Ctrl-C)."""
    from lqf.pruning import tuning

    def tune(model, masks, data, config, options, epochs, index, run, quiet, history, say, **kw):
        if len(seen) == stop_at:
            raise KeyboardInterrupt
        before = {k: v.clone() for k, v in model.state_dict().items()}
        before_rate = masks.counts().rate
        with torch.no_grad():
            for layer in masks.layers:
                layer.module.weight.add_(0.01 * (len(seen) + 1) * masks.masks[layer.name])
        val = history["reference"]["val_accuracy"] - drops[len(seen)] / 100
        seen.append(
            {
                "step": index,
                "val": val,
                "rate": masks.counts().rate,
                "state": {k: v.clone() for k, v in model.state_dict().items()},
                "before": before,
                "before_rate": before_rate,
                "epochs": epochs,
            }
        )
        return val

    monkeypatch.setattr(tuning, "tune", tune)


def _three_rounds(**changes) -> PruneOptions:
    """Three quick rounds of one epoch, a final phase, a 1-point target (rounds may lose 60)."""
    settings = {"rounds": 3, "trials": 3, "startup_trials": 2, "round_epochs": 1, "final_epochs": 1}
    return PruneOptions(**{**settings, "target_drop": 1, "round_drop": 60, **changes})


@pytest.mark.parametrize(
    "drops", [[0.5, 0.2, 5.0, 3.0], [0.5, 4.0, 0.9, 0.1], [0.5, 4.0, 0.1, 0.9], [2.0, 3.0, 4.0, 5.0]]
)
def test_keep_best_ends_with_the_most_compressed_feasible_candidate(tmp_path, monkeypatch, drops) -> None:
    from lqf.pruning import finepruning
    from lqf.runs import RunDirectory

    config, data, make_model = _tiny_setup(tmp_path)
    seen: list[dict] = []
    _scripted_tune(monkeypatch, drops, seen)
    options = _three_rounds(back_off=0)
    run = RunDirectory(str(tmp_path / "run"))
    model = make_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = finepruning.prune(model, data, config, options, run=run, quiet=True)
    assert len(seen) == 4  # three rounds and the final phase
    feasible = [s for s in seen if 100 * (result.history["reference"]["val_accuracy"] - s["val"]) <= 1 + 1e-9]
    final = result.model.state_dict()
    if not feasible:  # nothing within the target: the unpruned model it started from
        expected = {"state": start, "rate": 1.0}
        assert result.metrics["kept_step"] is None and result.metrics["fallback"] == "unpruned"
    else:  # the most compressed; among equals the most accurate, then the last
        expected = max(feasible, key=lambda s: (s["rate"], s["val"], s["step"]))
        assert result.metrics["kept_step"] == expected["step"]
    assert result.metrics["within_target"]
    assert all(torch.equal(final[k], expected["state"][k]) for k in final)
    assert result.metrics["compression"] == pytest.approx(expected["rate"], rel=1e-12)
    assert [c["step"] for c in result.metrics["candidates"]] == [s["step"] for s in seen]
    for layer in result.masks.layers:  # the masks came back with the weights
        assert torch.all(layer.module.weight[~result.masks.masks[layer.name]] == 0)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("back_off", [None, 1])
def test_back_off_undoes_rounds_until_a_model_is_within_the_target(tmp_path, monkeypatch, back_off) -> None:
    from lqf.pruning import finepruning
    from lqf.runs import RunDirectory

    config, data, make_model = _tiny_setup(tmp_path)
    seen: list[dict] = []
    # three rounds and the final phase over the target; undoing round 3 is not enough, round 2 is
    _scripted_tune(monkeypatch, [2.0, 3.0, 4.0, 5.0, 1.5, 0.5], seen)
    options = _three_rounds(final_epochs=2, back_off=back_off)
    run = RunDirectory(str(tmp_path / "run"))
    result = finepruning.prune(make_model(), data, config, options, run=run, quiet=True)
    m = result.metrics
    undone = [3, 2] if back_off is None else [3]
    assert len(seen) == 4 + len(undone)
    for phase, r in zip(seen[4:], undone, strict=True):
        # each back-off starts from the model and masks after round r - 1's fine-tuning, exactly
        assert _same_state(phase["before"], seen[r - 2]["state"])
        assert phase["before_rate"] == seen[r - 2]["rate"] and phase["epochs"] == options.final_epochs
    assert [b["round"] for b in m["back_off"]] == undone
    assert m["tune_epochs_run"] == 3 * 1 + 2 * (1 + len(undone))
    if back_off is None:  # round 2 undone: the model after round 1's fine-tuning, fine-tuned again
        assert m["kept_step"] == seen[5]["step"]
        assert result.history["best"]["drop"] == pytest.approx(0.5, abs=1e-6)
        assert m["compression"] == pytest.approx(seen[0]["rate"], rel=1e-12)
        assert m["theta"] == result.history["rounds"][0]["theta"]
        assert _same_state(result.model.state_dict(), seen[-1]["state"])
    else:  # one round only, and still over the target: the run ends with the unpruned model
        assert m["kept_step"] is None and m["fallback"] == "unpruned" and m["compression"] == 1.0
    for layer in result.masks.layers:
        assert torch.all(layer.module.weight[~result.masks.masks[layer.name]] == 0)
    assert not list((tmp_path / "run").glob("round*.pt"))  # the saved rounds go once the run is done


@pytest.mark.parametrize(
    ("until", "drops", "undone", "kept"),
    [
        ("within", [0.5, 3.0, 4.0, 5.0, 0.5], [], 0),  # round 1 is within: no back-off
        ("most-compressed", [0.5, 3.0, 4.0, 5.0, 2.0], [3], 0),  # round 2's model: over; round 1's: no gain
        ("most-compressed", [0.5, 3.0, 4.0, 5.0, 0.5], [3], 4),  # round 2's model, fine-tuned again: within
    ],
)
def test_back_off_until_most_compressed_goes_past_an_early_model_within(
    tmp_path, monkeypatch, until, drops, undone, kept
) -> None:
    from lqf.pruning import finepruning

    config, data, make_model = _tiny_setup(tmp_path)
    seen: list[dict] = []
    _scripted_tune(monkeypatch, drops, seen)
    result = finepruning.prune(make_model(), data, config, _three_rounds(back_off_until=until), quiet=True)
    rates = [r["compression"] for r in result.history["rounds"]]
    assert rates == sorted(set(rates))  # each round adds compression, so each undo goes back to less
    m = result.metrics
    assert [b["round"] for b in m["back_off"]] == undone and len(seen) == 4 + len(undone)
    assert m["kept_step"] == seen[kept]["step"]
    assert _same_state(result.model.state_dict(), seen[kept]["state"])
    assert m["compression"] == pytest.approx(seen[kept]["rate"], rel=1e-12)


def test_an_interrupted_back_off_resumes_without_repeating_a_finished_one(tmp_path, monkeypatch) -> None:
    from lqf.pruning import finepruning
    from lqf.runs import RunDirectory

    config, data, make_model = _tiny_setup(tmp_path)
    drops = [2.0, 3.0, 4.0, 5.0, 1.5, 0.5]
    options = _three_rounds()
    whole: list[dict] = []
    _scripted_tune(monkeypatch, drops, whole)
    expected = finepruning.prune(make_model(), data, config, options, quiet=True)  # no run directory
    seen: list[dict] = []
    _scripted_tune(monkeypatch, drops, seen, stop_at=5)  # Ctrl-C in the second back-off
    run = RunDirectory(str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        finepruning.prune(make_model(), data, config, options, run=run, quiet=True)
    assert len(seen) == 5 and (tmp_path / "run" / "round1.pt").is_file()
    _scripted_tune(monkeypatch, drops, seen)
    result = finepruning.prune(make_model(), data, config, options, run=run, resume=True, quiet=True)
    assert len(seen) == 6  # only the unfinished back-off ran again
    assert _same_state(seen[5]["before"], whole[5]["before"])
    assert _same_state(result.model.state_dict(), expected.model.state_dict())
    assert result.metrics["back_off"] == expected.metrics["back_off"]


def test_current_reference_is_measured_on_the_fine_tuned_model(tmp_path, monkeypatch) -> None:
    from lqf.pruning import finepruning
    from lqf.pruning.measure import MaskedAccuracy, bn_batches

    config, data, make_model = _tiny_setup(tmp_path)
    seen: list[dict] = []
    _scripted_tune(monkeypatch, [0.0, 0.0, 0.0], seen)
    options = PruneOptions(
        rounds=2, trials=3, startup_trials=2, round_epochs=1, final_epochs=1, round_reference="current"
    )
    result = finepruning.prune(make_model(), data, config, options, quiet=True)
    recal = bn_batches(data, config.batch_size, options.bn_batches, config.seed + 7919)
    for r, state in ((1, None), (2, seen[0]["state"])):
        model = make_model()
        if state is not None:
            model.load_state_dict(state)
        model.eval()
        layers = find_prunable(model, grouping=options.groups)
        expected = MaskedAccuracy(model, layers, data.val, 256, "cpu", recal)({x.group: 0.0 for x in layers})
        assert result.history["rounds"][r - 1]["reference"] == pytest.approx(expected, abs=1e-12)
    for t in result.history["trials"]:  # every trial's drop is taken from its round's reference
        ref = result.history["rounds"][t["round"] - 1]["reference"]
        assert t["drop"] == pytest.approx(100 * (ref - t["accuracy"]), abs=1e-9)


def test_continuous_schedule_is_one_cosine_over_all_phases() -> None:
    import math

    from lqf.pruning.state import plan
    from lqf.pruning.tuning import phase_schedule

    options = PruneOptions(rounds=2, round_epochs=1, final_epochs=2, tune_schedule="continuous", tune_lr=0.1)
    steps = 3  # batches per epoch
    seen = []
    for index, (kind, epochs) in enumerate(plan(options)):
        if kind != "tune":
            continue
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=options.tune_lr)
        scheduler = phase_schedule(opt, steps, epochs, index, options)
        for _ in range(epochs * steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
    total = options.tune_epochs * steps
    assert len(seen) == total == 12
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * k / total)) for k in range(total)]
    assert seen == pytest.approx(expected, abs=1e-15)


# -- a held-out part of the validation split judges the candidates ------------------------------------
def test_held_out_split_takes_the_last_images_of_every_class(tmp_path) -> None:
    from lqf.pruning.measure import held_out

    _, data, _ = _tiny_setup(tmp_path)
    search, select = held_out(data.val, 1)
    labels = data.val.labels
    assert torch.equal(torch.bincount(select.labels, minlength=3), torch.ones(3, dtype=torch.int64))
    assert len(search) + len(select) == len(data.val)
    last = [int(torch.nonzero(labels == c).flatten()[-1]) for c in range(3)]
    assert torch.equal(select.images, data.val.images[sorted(last)])
    rest = [i for i in range(len(labels)) if i not in last]
    assert torch.equal(search.images, data.val.images[rest]) and torch.equal(search.labels, labels[rest])
    assert held_out(data.val, 0) == (data.val, None)
    with pytest.raises(LqfError, match="--select-val 3 leaves no validation image"):
        held_out(data.val, 3)  # 3 per class: none would be left for the search


def test_held_out_images_alone_judge_the_candidates(tmp_path, monkeypatch) -> None:
    import lqf.training
    from lqf.pruning import finepruning, measure, tuning

    config, data, make_model = _tiny_setup(tmp_path)
    _, select = measure.held_out(data.val, 1)
    seen: list[dict] = []
    # on the search images every candidate is within the target ...
    _scripted_tune(monkeypatch, [0.0, 0.0, 0.0, 0.0], seen)
    tuned_on: list[int] = []
    original_tune = tuning.tune

    def tune(model, masks, data, *args, **kw):
        tuned_on.append(len(data.val))
        return original_tune(model, masks, data, *args, **kw)

    monkeypatch.setattr(tuning, "tune", tune)
    # ... on the held-out ones (the reference, then the four candidates) only round 1's is
    scripted = iter([0.9, 0.895, 0.87, 0.88, 0.86])
    judged: list[float] = []
    original_evaluate = lqf.training.evaluate

    def evaluate(model, images, **kw):
        out = original_evaluate(model, images, **kw)
        if torch.equal(images.images, select.images) and len(judged) < 5:
            judged.append(next(scripted))
            return {**out, "accuracy": judged[-1]}
        return out

    monkeypatch.setattr(lqf.training, "evaluate", evaluate)
    options = _three_rounds(back_off=0, select_val=1)
    result = finepruning.prune(make_model(), data, config, options, quiet=True)
    assert judged == [0.9, 0.895, 0.87, 0.88, 0.86]
    assert tuned_on == [6, 6, 6, 6]  # fine-tuning logs the search images only
    assert result.history["reference"]["n_val_subset"] == 6  # and the trials evaluate on them
    assert [c["val_accuracy"] for c in result.history["candidates"]] == judged[1:]
    assert result.metrics["kept_step"] == seen[0]["step"]
    assert result.history["best"]["drop"] == pytest.approx(0.5, abs=1e-6)
    assert _same_state(result.model.state_dict(), seen[0]["state"])
    m = result.metrics
    assert (m["n_select"], m["reference_select_accuracy"]) == (3, 0.9)
    assert m["select_accuracy"] == original_evaluate(result.model, select, batch_size=256)["accuracy"]
    assert m["select_drop_points"] == pytest.approx(100 * (0.9 - m["select_accuracy"]))


def test_over_the_target_ends_unpruned_or_as_allowed_and_the_cli_says_so(
    tmp_path, monkeypatch, tiny_model_spec, capsys
) -> None:
    """No fine-tuned candidate within the target: the unpruned model (exit 0, within the target),
    the last pruned one with --allow-over-target; without keep-best an over-target result exits 1."""
    from lqf.pruning import finepruning
    from lqf.runs import RunDirectory

    config, data, make_model = _tiny_setup(tmp_path)
    seen: list[dict] = []
    _scripted_tune(monkeypatch, [9.0] * 4, seen)
    result = finepruning.prune(make_model(), data, config, _three_rounds(back_off=0), quiet=True)
    assert result.metrics["fallback"] == "unpruned" and result.metrics["compression"] == 1.0
    assert result.metrics["test_accuracy"] == result.metrics["reference_test_accuracy"]
    seen.clear()
    options = _three_rounds(back_off=0, allow_over_target=True)
    run = RunDirectory(str(tmp_path / "allowed"))
    result = finepruning.prune(make_model(), data, config, options, run=run, quiet=True)
    assert _same_state(result.model.state_dict(), seen[-1]["state"]) and result.metrics["compression"] > 1
    assert "fallback" not in result.metrics

    # the CLI: a result over the target (here: reported so by the search) exits 1 with one line
    real = finepruning.prune

    def over(*args, **kwargs):
        result = real(*args, **kwargs)
        result.metrics.update(within_target=False, val_drop_points=5.0)
        return result

    monkeypatch.setattr(finepruning, "prune", over)
    seen.clear()
    _scripted_tune(monkeypatch, [0.0] * 20, seen)
    folder = write_image_folder(tmp_path / "images2", classes=3, per_class=6, size=12)
    common = ["--data", f"imagefolder:{folder}", "--image-size", "12", "--val-per-class", "2", "--quiet"]
    args = ["prune", "--model", tiny_model_spec, *common, "--epochs", "1", "--rounds", "1", "--trials", "2"]
    args += ["--startup-trials", "1", "--final-epochs", "1", "--target-drop", "1"]
    code = main([*args, "--out", str(tmp_path / "over")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "over --target-drop 1" in lines[0], lines
    assert "--allow-over-target" in lines[0] and (tmp_path / "over" / "metrics.json").is_file()
    assert main([*args, "--allow-over-target", "--out", str(tmp_path / "accepted")]) == 0
