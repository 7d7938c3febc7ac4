"""Which route solves an LQF problem: predicted time and memory of each, checked before work starts.

From the factors of two probe inputs (:class:`~lqf.linearization.factors.JacobianFactors`)
the plan knows, per linearized layer, what its factors hold per input and what its products
cost, so for ``N`` training and ``V`` validation inputs of ``C`` classes it predicts:

* ``kernel``: the factors of all ``N + V`` inputs, the kernel ``K`` (``(N C)^2`` float64) and one
  Cholesky factor at a time (as much again); time: the kernel's matrix products
  (``S^2 (O + 1)`` per pair of rows for a factored layer, ``P`` for a dense one, half of them
  by symmetry) and one factorization (``(N C)^3 / 3``) per ridge;
* ``cg`` with stored factors: the factors; time: ``max_iter`` products ``J^T J v`` from them
  (the most it may take; each reads the factors twice);
* ``cg`` streamed: no factors, each product a ``jvp`` and a ``vjp`` pass over the data,
  ``STREAM_FACTOR`` times a product from factors (measured on efficientnet_lite0).

Work is turned into seconds with this machine's float32 matrix-product rate and memory read
rate, each measured once (a 1024 x 1024 product and a 256 MiB sum, a few tens of ms);
float64 counts double. ``auto`` picks the fastest route
that fits ``memory_mb``; a route asked for by name that does not fit gives one line naming
the size and what to change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from lqf.errors import LqfError
from lqf.linearization.factors import DENSE, JacobianFactors
from lqf.linearization.linear_model import LinearizedModel

#: a jvp + vjp pass over the data against a product from stored factors (efficientnet_lite0,
#: last 3 units, 1,000 inputs: 1.1 s against 0.16 s)
STREAM_FACTOR = 7.0


@lru_cache(maxsize=1)
def matmul_rate() -> float:
    """Float32 matrix-product rate of this machine in FLOP/s (best of three 1024^3 products)."""
    a = torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best


@lru_cache(maxsize=1)
def memory_rate() -> float:
    """Bytes per second this machine reads from memory (best of three sums over 256 MiB)."""
    x = torch.ones(64 * 2**20)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


@dataclass
class Costs:
    """Per input and per pair of rows, from the factors of a probe batch."""

    classes: int
    factor_bytes: float  # per input
    pair_flops: float  # kernel, per pair of rows (both factored and dense layers)
    product_flops: float  # one J^T J v, per input
    dim: int

    @classmethod
    def probe(cls, lin: LinearizedModel, inputs: torch.Tensor) -> Costs:
        f = JacobianFactors(lin, inputs)
        n, c = f.n, f.classes
        pair = 0.0
        product = 0.0
        for block in f.blocks:
            if block[0] == DENSE:
                p = block[1].shape[2]
                pair += 2.0 * p
                product += 4.0 * c * p  # J v and J^T u, per input
                continue
            _, a, g = block
            _, _, s, groups, o = g.shape
            k = a.shape[3]
            pair += 2.0 * s * s * o * groups + 2.0 * s * s * groups  # Gram of g, its weighting
            product += 4.0 * s * groups * k * o + 4.0 * c * s * groups * o
        return cls(c, f.nbytes() / n, pair, product, sum(d.numel() for d in lin.delta))


@dataclass
class Plan:
    """The chosen route and why.

    Attributes:
        route: ``kernel`` or ``cg``.
        storage: ``factors`` (stored) or ``streamed`` (``cg`` only).
        reason: one line for the summary.
        predicted: per candidate route, predicted ``seconds`` and ``memory_mb``.
    """

    route: str
    storage: str
    reason: str
    predicted: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "storage": self.storage,
            "reason": self.reason,
            "predicted": self.predicted,
        }


def predict(costs: Costs, n: int, n_val: int, ridges: int, max_iter: int) -> dict[str, dict[str, float]]:
    """Predicted seconds and MiB of each route (see the module docstring)."""
    rate = matmul_rate()
    rows = n * costs.classes
    factors_mb = costs.factor_bytes * (n + n_val) / 2**20
    kernel_flops = 0.5 * rows * rows * costs.pair_flops + ridges * 2.0 * rows**3 / 3 * 2
    product = costs.product_flops * n / rate + 2 * costs.factor_bytes * n / memory_rate()
    vectors_mb = (2 * ridges + 4) * costs.dim * 4 / 2**20
    return {
        "kernel": {"seconds": kernel_flops / rate, "memory_mb": factors_mb + 2 * rows * rows * 8 / 2**20},
        "cg": {"seconds": max_iter * product, "memory_mb": factors_mb + vectors_mb},
        "cg-streamed": {"seconds": STREAM_FACTOR * max_iter * product, "memory_mb": vectors_mb},
    }


def plan_solver(
    requested: str, costs: Costs, n: int, n_val: int, ridges: int, *, memory_mb: float, max_iter: int
) -> Plan:
    """The route for ``requested`` (``auto``, ``kernel`` or ``cg``) within ``memory_mb``.

    Raises:
        LqfError: the route asked for (or, for ``auto``, every route) does not fit in ``memory_mb``.
    """
    pred = predict(costs, n, n_val, ridges, max_iter)
    fits = {name: p["memory_mb"] <= memory_mb for name, p in pred.items()}
    rows = n * costs.classes

    def describe(name: str) -> str:
        p = pred[name]
        return f"{name} ~{p['seconds']:.0f} s, {p['memory_mb']:.0f} MiB"

    if requested == "kernel":
        if not fits["kernel"]:
            raise LqfError(
                f"the kernel route needs about {pred['kernel']['memory_mb']:.0f} MiB for {rows} rows "
                f"(N*C = {n}*{costs.classes}; limit --kernel-memory-mb {memory_mb:.0f}): use --solver cg, "
                "fewer images (--shots) or fewer linearized units (--linearize)"
            )
        return Plan("kernel", "factors", "asked for (--solver kernel)", pred)
    if requested == "cg":
        storage = "factors" if fits["cg"] else "streamed"
        why = "asked for (--solver cg)" + ("" if fits["cg"] else "; factors do not fit: jvp/vjp passes")
        return Plan("cg", storage, why, pred)
    candidates = [name for name in ("kernel", "cg", "cg-streamed") if fits[name]]
    if not candidates:
        raise LqfError(
            f"no LQF route fits in --kernel-memory-mb {memory_mb:.0f} for {rows} rows: "
            f"{describe('cg-streamed')} at least; raise --kernel-memory-mb or linearize fewer units"
        )
    best = min(candidates, key=lambda name: pred[name]["seconds"])
    others = [describe(name) for name in pred if name != best]
    reason = f"auto: predicted {describe(best)}; " + "; ".join(others)
    if best == "cg-streamed":
        return Plan("cg", "streamed", reason, pred)
    return Plan(best, "factors", reason, pred)
