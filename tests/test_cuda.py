"""CUDA: every method, head and the pruning loop run with ``--device cuda`` and give what the CPU gives.

Skipped where no CUDA device is visible. The references are the CPU runs of the same code, and in
float64 the dense products and finite-difference-checked CPU paths of the other test files.
Two tests elsewhere also run on CUDA through ``conftest.DEVICES``: the fast head's gradients
(test_heads.py) and masks holding through optimizer steps (test_pruning.py).
TF32 is switched off for the comparisons: with it, cuDNN convolutions and matrix products round
their inputs to 10 mantissa bits (relative error about 1e-3), which is PyTorch's default for
convolutions on Ampere and later cards and fine for training, but not a float32 comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lqf.cli.main import main
from lqf.config import FitConfig
from lqf.curvature import KFAC
from lqf.heads import make_head
from lqf.heads.hadamard import next_pow2
from lqf.linearization import LinearizedModel
from lqf.methods.finetune import FinetuneOptions
from lqf.methods.lqf import LQFOptions
from lqf.models import build_model
from lqf.pruning import load_packed
from lqf.runs.fit import fit, load_run

from .conftest import tiny_net, write_image_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """``max |a - b| <= rel * max |b|`` (both moved to the CPU)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    err = float((a - b).abs().max())
    assert err <= rel * float(b.abs().max()), (err, float(b.abs().max()))


# -- whole runs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_dropout_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny CNN without dropout, whose masks come from each device's own RNG."""
    net = tiny_net()
    net[8] = nn.Identity()
    path = tmp_path_factory.mktemp("models") / "tiny-no-dropout.pt"
    torch.save(net, path)
    return f"file:{path}"


#: (method, head, options): every method with the learned head and a fixed one, and each LQF solver.
#: Fine-tuning with SGD: AdamW divides each gradient entry by its running size, so an entry that is
#: rounding noise on one device and its (different) rounding noise on the other become steps of
#: the full learning rate in either direction; the two runs then drift apart (relative 1e-3 with the
#: linear head, 8e-3 with the fixed one, measured on an H100), which says nothing about the device code.
RUNS = [
    ("finetune", "linear", FinetuneOptions(optimizer="sgd", lr=0.05)),
    ("finetune", "fixed-hadamard", FinetuneOptions(optimizer="sgd", lr=0.05)),
    ("linear-probe", "linear", None),
    ("linear-probe", "fixed-orthogonal", None),
    ("lqf", "linear", LQFOptions(solver="kernel", linearize="last-2", lqf_ridge=1e-2)),
    ("lqf", "fixed-hadamard", LQFOptions(solver="kernel", linearize="last-2", lqf_ridge=1e-2)),
    (
        "lqf",
        "linear",
        LQFOptions(solver="cg", preconditioner="kfac", linearize="last-2", lqf_ridge=1e-2, tol=1e-6),
    ),
    ("lqf", "linear", LQFOptions(solver="sgd", preconditioner="kfac", linearize="last-2", lqf_ridge=1e-2)),
]


@pytest.mark.parametrize(
    "method, head, options",
    RUNS,
    ids=[f"{m}-{h}" + (f"-{o.solver}" if isinstance(o, LQFOptions) else "") for m, h, o in RUNS],
)
def test_a_cuda_run_gives_the_cpu_model(no_dropout_spec, tmp_path: Path, method, head, options) -> None:
    """The same seeded run on both devices: outputs agree to 1e-3 of their size (float32 training
    for two epochs, or a float32 solve, in a different summation order), and the CUDA run's saved
    model loads on the CPU to the outputs it had."""
    common = dict(model=no_dropout_spec, data="digits", method=method, head=head, image_size=16)
    common |= dict(shots=6, val_per_class=4, max_test=60, epochs=2, seed=1)
    results = {
        device: fit(FitConfig(**common, device=device), options, out=str(tmp_path / device), quiet=True)
        for device in ("cpu", "cuda")
    }
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = results["cpu"].model.eval()(x)
        cuda = results["cuda"].model.eval()(x.cuda())
    _close(cuda, cpu, 1e-3)
    metrics = json.loads((tmp_path / "cuda" / "metrics.json").read_text())
    assert metrics["peak_memory_mb"] > 0
    _, _, loaded, _ = load_run(str(tmp_path / "cuda"))
    with torch.no_grad():
        _close(loaded.to("cpu").eval()(x), cuda, 1e-6)


def test_prune_runs_on_cuda_and_its_packed_file_loads_on_the_cpu(tiny_model_spec, tmp_path, capsys) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=6, size=12)
    out = tmp_path / "pruned"
    common = ["--data", f"imagefolder:{folder}", "--image-size", "12", "--val-per-class", "1", "--quiet"]
    args = ["prune", "--model", tiny_model_spec, *common, "--epochs", "1", "--rounds", "2", "--trials", "3"]
    args += ["--startup-trials", "2", "--final-epochs", "1", "--device", "cuda"]
    code = main([*args, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compression"] > 1
    _, _, model, _ = load_run(str(out))
    model.eval()
    x = torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        model.load_state_dict(load_packed(str(out / "model.packed.safetensors")))
        assert torch.equal(model(x), expected)


# -- the pieces -------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, c", [(1280, 10), (1280, 1000), (100, 3000), (513, 7)])
def test_fixed_heads_on_cuda_equal_the_cpu(d: int, c: int) -> None:
    """The fast Walsh-Hadamard path and the orthogonal matrix on CUDA, float64: equal to the CPU
    module to 1e-12 (the same sums), and no global RNG, CPU or CUDA, is touched."""
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    x = torch.randn(6, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d + c))
    for name in ("fixed-hadamard", "fixed-orthogonal"):
        if name == "fixed-hadamard" and c > next_pow2(d):
            continue  # refused: rows would repeat
        head = make_head(name, d, c, seed=3).double()
        with torch.no_grad():
            head.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(c))
            ref = head(x)
        moved = make_head(name, d, c, seed=3).double()
        moved.load_state_dict(head.state_dict())
        moved = moved.cuda()
        with torch.no_grad():
            torch.testing.assert_close(moved(x.cuda()).cpu(), ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


def test_linearized_model_on_cuda_equals_the_cpu() -> None:
    """f_lin and J v of efficientnet_lite0 (random weights, float64) on both devices, to 1e-10."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 4, pretrained=False).double().eval()
    names = [n for n, _ in model.named_parameters()][-20:]
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    lin = LinearizedModel(model, names)
    v = [torch.randn_like(d) for d in lin.delta]
    with torch.no_grad():
        ref_f, ref_jv = lin(x), lin.jvp(x, v)
    lin = lin.cuda()
    with torch.no_grad():
        f, jv = lin(x.cuda()), lin.jvp(x.cuda(), [t.cuda() for t in v])
    _close(f, ref_f, 1e-10)
    _close(jv, ref_jv, 1e-10)


def test_kfac_on_cuda_equals_the_cpu() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    ref = KFAC(LinearizedModel(net, [n for n, _ in net.named_parameters()]), x)
    net = net.cuda()
    kfac = KFAC(LinearizedModel(net, [n for n, _ in net.named_parameters()]), x.cuda())
    _close(kfac.dense(), ref.dense(), 1e-12)
    v = torch.randn(ref.offsets[-1], dtype=torch.float64)
    _close(kfac.inverse(v.cuda(), 0.05, 0.3), ref.inverse(v, 0.05, 0.3), 1e-10)
