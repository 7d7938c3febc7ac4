# ruff: noqa: UP031, B905, B023
"""Exploration: which linearization makes LQF differ from the linear probe (validation only).

Kernel regression with the empirical NTK of the last units of efficientnet_lite0 (cut before
CUT, e.g. features.blocks.6.0), head and backbone tangent kernels kept apart:
K = K_head + beta * K_backbone, for heads at their random initialisation ("random") or fitted as
the ridge probe ("probe"), ridge lam * mean(diag K) on a grid; the best lam on validation is
reported with its test accuracy.

Usage::

    python benchmarks/explorations/lqf_kernel_exploration.py DATA SHOTS CUT SLOPE [SEED] [BETAS] [HEADS]
    python benchmarks/explorations/lqf_kernel_exploration.py fashion-mnist 10 features.blocks.6.0 0
"""

import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import torch

from lqf.data import load_data
from lqf.linearization import LinearizedModel, swap_activations
from lqf.linearization.chain import split_at
from lqf.linearization.jacobian import jacobian
from lqf.models import build_model
from lqf.solvers.ridge import GRID, mean_eigenvalue, ridge_path
from lqf.training.evaluate import apply

data_spec = sys.argv[1]
shots = int(sys.argv[2])
cut = sys.argv[3]
slope = float(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
betas = [float(b) for b in (sys.argv[6].split(",") if len(sys.argv) > 6 else "0,1,10,100,1000".split(","))]
heads_wanted = sys.argv[7].split(",") if len(sys.argv) > 7 else ["random", "probe"]
data = load_data(data_spec, image_size=64, shots=shots, val_per_class=20, seed=seed, max_test=2000)
C = len(data.classes)
m = build_model(
    "efficientnet_lite0", C, pretrained=True, generator=torch.Generator().manual_seed(seed)
).eval()
if slope > 0:
    print("swapped", swap_activations(m, slope, True))
probe = next(iter(data.train.batches(4)))[0]
pre, suf = split_at(m, cut, probe)


def cache(s):
    return apply(pre, s, batch_size=256)


Xtr, Xva, Xte = cache(data.train), cache(data.val), cache(data.test)
ytr, yva, yte = data.train.labels, data.val.labels, data.test.labels
with torch.no_grad():
    Ftr = suf[:-1](Xtr)
    Fva = suf[:-1](Xva)
    Fte = suf[:-1](Xte)
Y = torch.nn.functional.one_hot(ytr, C).double()
sc = mean_eigenvalue(Ftr)
cands = ridge_path(Ftr, Y, [r * sc for r in GRID])
acc = lambda L, y: (L.argmax(1) == y).float().mean().item()
vs = [acc(Fva.double() @ w + b, yva) for w, b in cands]
bi = max(range(len(GRID)), key=lambda i: (vs[i], i))
w, b = cands[bi]
print("probe val %.3f test %.3f rel %g" % (vs[bi], acc(Fte.double() @ w + b, yte), GRID[bi]), flush=True)
heads = {
    "random": (m.head.weight.detach().clone(), m.head.bias.detach().clone()),
    "probe": (w.T.float(), b.float()),
    "probe-x3": (3 * w.T.float(), 3 * b.float()),
}
n1 = len(Xtr)
for hname in heads_wanted:
    hw, hb = heads[hname]
    with torch.no_grad():
        m.head.weight.copy_(hw)
        m.head.bias.copy_(hb)
    names = [n for n, _ in suf.named_parameters()]
    lm = LinearizedModel(suf, names)
    ishead = torch.cat(
        [
            torch.full((d.numel(),), n.startswith(str(len(suf) - 1) + "."), dtype=torch.bool)
            for n, d in zip(names, lm.delta)
        ]
    )
    t = time.time()
    P = lm.num_linearized()
    J = torch.empty(n1 * C, P)
    for i in range(0, n1, 8):
        J[i * C : (i + 8) * C] = jacobian(lm, Xtr[i : i + 8]).reshape(-1, P)
    nb = int((~ishead).sum())
    assert not ishead[:nb].any()
    Kh = (J[:, nb:] @ J[:, nb:].T).double()
    Kb = (J[:, :nb] @ J[:, :nb].T).double()
    print(
        hname,
        "jac+kernel %.1fs" % (time.time() - t),
        "diag head %.3g backbone %.3g" % (Kh.diagonal().mean(), Kb.diagonal().mean()),
        flush=True,
    )
    with torch.no_grad():
        f0tr = suf(Xtr).double()
        f0va = suf(Xva)
        f0te = suf(Xte)
    r = (Y - f0tr).reshape(-1)

    def predict(dw_flat, X, f0):
        v = list(torch.split(dw_flat.float(), [d.numel() for d in lm.delta]))
        v = [a.reshape(d.shape) for a, d in zip(v, lm.delta)]
        with torch.no_grad():
            return f0 + torch.cat([lm.jvp(X[i : i + 500], v) for i in range(0, len(X), 500)])

    for beta in betas:
        K = Kh + beta * Kb
        mu = K.diagonal().mean()
        evals, evecs = torch.linalg.eigh(K)
        res = []
        for lam in [1e-4, 1e-3, 1e-2, 1e-1, 1]:
            a = evecs @ ((evecs.T @ r) / (evals + lam * mu))
            sw = torch.where(ishead, 1.0, beta).double()
            dw = sw * (J.T @ a.float()).double()
            res.append((acc(predict(dw, Xva, f0va), yva), lam, dw))
        best = max(res, key=lambda z: (z[0], z[1]))
        te = acc(predict(best[2], Xte, f0te), yte)
        print(
            f"  head={hname} beta={beta} best val {best[0]:.3f} test {te:.3f} lam {best[1]}  vals:",
            [f"{v:.2f}" for v, _, _ in res],
            flush=True,
        )
    del J
