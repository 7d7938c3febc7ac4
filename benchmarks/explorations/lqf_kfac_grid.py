# ruff: noqa: E402, E501, E731, B023, I001
"""Exploration: one K-FAC-preconditioned CG per ridge against multi-shift CG for the LQF grid.

The default LQF problem (efficientnet_lite0, last 3 units + head, fashion-mnist, seed 0) at SHOTS
images per class; products ``J^T J v`` from the stored factors; ridges from strong to weak, each
warm-started from the last, to a relative residual of 1e-4. Output: ``lqf_kfac_grid.md``.

Usage::

    python benchmarks/explorations/lqf_kfac_grid.py SHOTS [DAMPING]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lqf_speed import _problem
from lqf.linearization.factors import JacobianFactors
from lqf.methods.lqf import RIDGE_GRID
from lqf.solvers.grid import _flat, _unflat
from lqf.solvers import conjugate_gradient
from lqf.curvature import KFAC

shots = int(sys.argv[1])
damp = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
lin, xtr, xva, xte, targets, data = _problem(shots, 0)
t = time.perf_counter()
train = JacobianFactors(lin, xtr)
print("factors", time.perf_counter() - t, flush=True)
n, c = train.n, train.classes
residual = targets - train.outputs
scale = float(train.diagonal().sum()) / (n * c) / n
t = time.perf_counter()
kfac = KFAC(lin, xtr, batch_size=64)
print("kfac", time.perf_counter() - t, flush=True)
damping = damp * kfac.mean_eigenvalue()
b = _flat(train.vjp(residual)) / n
cnt = [0]


def op(z):
    cnt[0] += 1
    return _flat(train.normal(_unflat(z, lin.delta))) / n


t = time.perf_counter()
op(b)
print("product", time.perf_counter() - t, flush=True)
x = None
for r in sorted(RIDGE_GRID, reverse=True):
    lam = r * scale
    t = time.perf_counter()
    c0 = cnt[0]
    res = conjugate_gradient(
        lambda v: op(v) + lam * v,
        b,
        x0=x,
        precondition=lambda v: kfac.inverse(v, damping, lam),
        tol=1e-4,
        max_iter=1000,
    )
    x = res.x
    print(
        f"ridge {r}: its {res.iterations} conv {res.converged} res {res.residual:.1e} products {cnt[0] - c0} {time.perf_counter() - t:.1f}s",
        flush=True,
    )
