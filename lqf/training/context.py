"""What a training method may use besides the model and the data: :class:`FitContext`.

It sits below the methods and the epoch loop (both take it), so that neither
imports the other's layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lqf.config import FitConfig
    from lqf.runs import RunDirectory


@dataclass
class FitContext:
    """What a method may use besides the model and the data.

    Attributes:
        config: the shared settings.
        run: the run directory (``None`` for in-memory use from Python).
        quiet: no progress bars.
        resume: continue from the run directory's checkpoint.
        history: per-epoch records the method logged (filled by ``log``).
        extra: method-specific results to merge into ``metrics.json``.
        resumed_seconds: training time spent before a resume.
        on_epoch_end: called with the epoch number after each checkpoint.
    """

    config: FitConfig
    run: RunDirectory | None = None
    quiet: bool = False
    resume: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    resumed_seconds: float = 0.0
    on_epoch_end: Callable[[int], None] | None = None

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def generator(self, *salt: int) -> torch.Generator:
        """A CPU generator seeded by ``(config.seed, *salt)``, independent of the global RNG."""
        seed = self.config.seed
        for s in salt:
            seed = (seed * 1_000_003 + s + 1) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def log(self, record: dict[str, Any]) -> None:
        """Record one epoch (kept in ``history`` and appended to ``log.jsonl``)."""
        self.history.append(record)
        if self.run is not None:
            self.run.append_log(record)
