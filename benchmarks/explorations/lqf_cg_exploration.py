# ruff: noqa: UP031, B905, B023, E702, E401, E501
"""Exploration: LQF over the whole network with conjugate gradient, around the probe head.

Usage::

    python benchmarks/explorations/lqf_cg_exploration.py DATA SHOTS CUT SLOPE SEED LAMBDAS [euclid|unit]
    python benchmarks/explorations/lqf_cg_exploration.py fashion-mnist 10 features.conv_stem 0 0 1,0.1,0.01,0.001
"""

import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import torch

from lqf.data import load_data
from lqf.linearization import LinearizedModel, swap_activations
from lqf.linearization.chain import split_at
from lqf.models import build_model
from lqf.solvers.cg import conjugate_gradient
from lqf.solvers.problem import QuadraticProblem
from lqf.solvers.ridge import GRID, mean_eigenvalue, ridge_path
from lqf.training.evaluate import apply

data_spec = sys.argv[1]
shots = int(sys.argv[2])
cut = sys.argv[3]
slope = float(sys.argv[4])
seed = int(sys.argv[5])
lams = [float(x) for x in sys.argv[6].split(",")]
scheme = sys.argv[7] if len(sys.argv) > 7 else "euclid"
data = load_data(data_spec, image_size=64, shots=shots, val_per_class=20, seed=seed, max_test=2000)
C = len(data.classes)
m = build_model(
    "efficientnet_lite0", C, pretrained=True, generator=torch.Generator().manual_seed(seed)
).eval()
if slope > 0:
    print("swapped", swap_activations(m, slope, True))
probe = next(iter(data.train.batches(4)))[0]
pre, suf = split_at(m, cut, probe)
cache = lambda s: apply(pre, s, batch_size=256)
Xtr, Xva, Xte = cache(data.train), cache(data.val), cache(data.test)
ytr, yva, yte = data.train.labels, data.val.labels, data.test.labels
with torch.no_grad():
    Ftr = suf[:-1](Xtr)
    Fva = suf[:-1](Xva)
    Fte = suf[:-1](Xte)
Y = torch.nn.functional.one_hot(ytr, C).float()
sc = mean_eigenvalue(Ftr)
cands = ridge_path(Ftr, Y.double(), [r * sc for r in GRID])
acc = lambda L, y: (L.argmax(1) == y).float().mean().item()
vs = [acc(Fva.double() @ w + b, yva) for w, b in cands]
bi = max(range(len(GRID)), key=lambda i: (vs[i], i))
w, b = cands[bi]
print("probe val %.3f test %.3f rel %g" % (vs[bi], acc(Fte.double() @ w + b, yte), GRID[bi]), flush=True)
with torch.no_grad():
    m.head.weight.copy_(w.T.float())
    m.head.bias.copy_(b.float())
names = [n for n, _ in suf.named_parameters()]
lm = LinearizedModel(suf, names)
metric = None
if scheme == "unit":
    # per-tensor metric: equalise each tensor's share of trace(J^T J)
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 2, (len(Xtr), C), generator=g).float() * 2 - 1
    tmp = QuadraticProblem(lm, Xtr, Y, 0.0, batch_size=128)
    jt = tmp.unflatten(tmp.vjp(u))
    tr = [float(t.pow(2).sum()) for t in jt]
    metric = [max(t, 1e-12) / sum(tr) * len(tr) for t in tr]
prob = QuadraticProblem(lm, Xtr, Y, 0.0, metric=metric, batch_size=128)
g = torch.Generator().manual_seed(0)
u = torch.randint(0, 2, (len(Xtr), C), generator=g).float() * 2 - 1
trace = float(prob.vjp(u).pow(2).sum()) if metric is None else float((prob.vjp(u).pow(2) / prob.metric).sum())
scale = trace / (len(Xtr) * C) / len(Xtr)
print("P", prob.dim, "trace", trace, flush=True)
b = prob.rhs()
x = None
for lr in sorted(lams, reverse=True):
    prob.lam = lr * scale
    t = time.time()
    res = conjugate_gradient(prob.hvp, b, x0=x, tol=1e-3, max_iter=150)
    x = res.x
    v = prob.unflatten(x)
    with torch.no_grad():
        pv = suf(Xva) + lm.jvp(Xva, v)
        pt = torch.cat([suf(Xte[i : i + 500]) + lm.jvp(Xte[i : i + 500], v) for i in range(0, len(Xte), 500)])
        pn = torch.func.functional_call(suf, {n: w0 + d for n, w0, d in zip(names, lm.w0, v)}, (Xte,))
    print(
        f"lam {lr:g}: it {res.iterations} res {res.residual:.1e} {time.time() - t:.0f}s val {acc(pv, yva):.3f} test {acc(pt, yte):.3f} nonlin-test {acc(pn, yte):.3f}",
        flush=True,
    )
