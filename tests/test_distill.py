"""Distillation: the loss against its closed form, its plumbing through the epoch loop and
``lqf prune --distill`` (the teacher is the unpruned model, a resumed run included)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lqf.pruning import PruneOptions
from lqf.training.distill import distillation_loss, distilling

from .test_pruning import _tiny_setup


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.floats(0, 1),
    temperature=st.floats(0.5, 8),
    seed=st.integers(0, 10_000),
)
def test_distillation_loss_and_gradient_match_the_closed_form(
    alpha: float, temperature: float, seed: int
) -> None:
    """float64; the reference writes out the softmaxes, CE = -mean log p_y and
    KL = mean sum_c q_c (log q_c - log p_c), and the gradient
    dL/ds = [(1 - alpha) (softmax(s) - onehot(y)) + alpha T (softmax(s/T) - softmax(t/T))] / B
    (tolerance 1e-10)."""
    g = torch.Generator().manual_seed(seed)
    b, c = 7, 5
    s = (3 * torch.randn(b, c, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = 3 * torch.randn(b, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    loss = distillation_loss(s, y, t, alpha=alpha, temperature=temperature)
    loss.backward()

    def softmax(z: torch.Tensor) -> torch.Tensor:
        e = torch.exp(z - z.max(1, keepdim=True).values)
        return e / e.sum(1, keepdim=True)

    sd = s.detach()
    p, ps, q = softmax(sd), softmax(sd / temperature), softmax(t / temperature)
    ce = -torch.log(p[torch.arange(b), y]).mean()
    kl = (q * (torch.log(q) - torch.log(ps))).sum(1).mean()
    expected = (1 - alpha) * ce + alpha * temperature**2 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    onehot = torch.nn.functional.one_hot(y, c).double()
    grad = ((1 - alpha) * (p - onehot) + alpha * temperature * (ps - q)) / b
    torch.testing.assert_close(s.grad, grad, rtol=1e-10, atol=1e-12)


def _train(make_model, data, config, teacher, alpha: float, plain: bool = False) -> dict:
    from lqf.training import train_epochs
    from lqf.training.context import FitContext

    model = make_model()
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = FitContext(config=dataclasses.replace(config, epochs=2), run=None, quiet=True)
    if plain:
        train_epochs(model, data, ctx, optimizer=opt)
    else:
        loss, target = distilling(teacher, alpha, 3.0)
        train_epochs(model, data, ctx, optimizer=opt, loss_fn=loss, target_fn=target)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_epoch_loop_distils_through_target_fn(tmp_path: Path) -> None:
    """alpha = 1 trains on the teacher alone (scrambled labels give the same weights, bit for
    bit); alpha = 0 is plain cross-entropy; a different teacher changes the result."""
    config, data, make_model = _tiny_setup(tmp_path)
    teacher = make_model()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(2)
    scrambled = dataclasses.replace(
        data,
        train=dataclasses.replace(
            data.train, labels=data.train.labels[torch.randperm(len(data.train), generator=g)]
        ),
    )
    assert not torch.equal(scrambled.train.labels, data.train.labels)
    same = _train(make_model, data, config, teacher, 1.0)
    assert all(
        torch.equal(v, _train(make_model, scrambled, config, teacher, 1.0)[k]) for k, v in same.items()
    )
    plain = _train(make_model, data, config, teacher, 0.0, plain=True)
    assert all(torch.equal(v, _train(make_model, data, config, teacher, 0.0)[k]) for k, v in plain.items())
    other = _train(make_model, data, config, make_model(), 1.0)
    assert any(not torch.equal(v, other[k]) for k, v in same.items())
    assert any(not torch.equal(v, plain[k]) for k, v in same.items())


def test_prune_distils_from_the_unpruned_model_also_when_resumed(tmp_path: Path, monkeypatch) -> None:
    from lqf.pruning import finepruning
    from lqf.runs import RunDirectory
    from lqf.training import distill

    config, data, make_model = _tiny_setup(tmp_path)
    unpruned = {k: v.clone() for k, v in make_model().state_dict().items()}
    teachers: list[dict] = []
    original = distill.distilling

    def spy(teacher, alpha, temperature):
        teachers.append({k: v.clone() for k, v in teacher.state_dict().items()})
        assert (alpha, temperature) == (0.7, 2.0)
        if len(teachers) == 2:
            raise KeyboardInterrupt
        return original(teacher, alpha, temperature)

    monkeypatch.setattr(distill, "distilling", spy)
    options = PruneOptions(
        rounds=2,
        trials=3,
        startup_trials=2,
        round_epochs=1,
        final_epochs=1,
        distill=0.7,
        distill_temperature=2.0,
    )
    run = RunDirectory(str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        finepruning.prune(make_model(), data, config, options, run=run, quiet=True)
    result = finepruning.prune(make_model(), data, config, options, run=run, resume=True, quiet=True)
    assert len(teachers) == 4  # phases 1 and 2 (interrupted), then 2 again and the final one
    for state in teachers:
        assert all(torch.equal(state[k], unpruned[k]) for k in unpruned)
    pruned = result.model.state_dict()
    assert any(not torch.equal(pruned[k], unpruned[k]) for k in unpruned)
