"""What a pruning configuration is worth: accuracy against compression.

Two forms (Tung et al., BMVC 2017, Sec. 3, use the weighted one):

* ``constraint`` (the default): maximise the fraction of parameters removed,
  ``r(theta) = 1 - N_kept / N``, subject to an accuracy drop of at most
  ``epsilon`` points against the unpruned model,
  ``100 * (a_ref - a(theta)) <= epsilon``;
* ``weighted``: maximise ``(1 - gamma) * a(theta) + gamma * r(theta)``.

The constraint is the default because it is what a user can state without
calibration: "at most one point less accurate, as small as possible". The
weighted form needs ``gamma`` chosen per task, since how many points of
accuracy a point of compression is worth depends on how fast accuracy falls
with pruning. Compression enters both as the removed fraction ``r`` in
``[0, 1)``, not the rate ``N / N_kept`` (unbounded), so the two terms have the
same scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Objective:
    """One of the two objectives (see the module docstring).

    Attributes:
        reference: ``a_ref``, validation accuracy of the unpruned model in ``[0, 1]``.
        target_drop: ``epsilon`` in accuracy points (constraint form).
        gamma: the weight of compression (weighted form); ``None`` selects the constraint form.
    """

    reference: float
    target_drop: float = 1.0
    gamma: float | None = None

    @property
    def constrained(self) -> bool:
        return self.gamma is None

    def drop(self, accuracy: float) -> float:
        """Accuracy drop in points, ``100 * (a_ref - a)``."""
        return 100.0 * (self.reference - accuracy)

    def value(self, accuracy: float, removed: float) -> float:
        """The maximised quantity: ``r`` (constraint form) or ``(1 - gamma) a + gamma r``."""
        if self.gamma is None:
            return removed
        return (1.0 - self.gamma) * accuracy + self.gamma * removed

    def violation(self, accuracy: float) -> float:
        """``drop - epsilon``: feasible when ``<= 0`` (always ``0`` in the weighted form)."""
        return self.drop(accuracy) - self.target_drop if self.constrained else 0.0

    def feasible(self, accuracy: float) -> bool:
        return self.violation(accuracy) <= 1e-9

    def best(self, trials: list[dict[str, Any]]) -> dict[str, Any]:
        """The best trial record (``accuracy``, ``removed``): the most compressed feasible one,
        or, if none is feasible, the most accurate; in the weighted form the highest value."""
        if not trials:
            raise ValueError("no trials to choose from")
        if not self.constrained:
            return max(trials, key=lambda t: (t["value"], t["accuracy"]))
        feasible = [t for t in trials if self.feasible(t["accuracy"])]
        if feasible:
            return max(feasible, key=lambda t: (t["removed"], t["accuracy"]))
        return max(trials, key=lambda t: (t["accuracy"], t["removed"]))

    def describe(self) -> str:
        if self.constrained:
            return f"max compression s.t. accuracy drop <= {self.target_drop:g} points"
        return f"max (1 - {self.gamma:g}) * accuracy + {self.gamma:g} * removed fraction"
