"""Run directories: everything a run produced, in one folder users can compare.

Layout::

    RUN_DIR/
      config.json          the fully resolved settings (run + method options)
      metrics.json         final numbers (method, model, data, n_train, n_test,
                           test_accuracy, train_seconds, peak_memory_mb, ...)
      log.jsonl            one JSON record per epoch
      model.safetensors    the trained weights
      model.json           what is needed to rebuild the model (classes, head)
      checkpoint.pt        training state for ``lqf fit --resume`` (atomic)
      learning_curve.png   loss and accuracy per epoch

Every file is written atomically (:mod:`lqf.io`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import torch

from lqf import __version__
from lqf.errors import LqfError
from lqf.io import atomic_write, read_json, write_json, write_text

CONFIG = "config.json"
METRICS = "metrics.json"
LOG = "log.jsonl"
WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
CHECKPOINT = "checkpoint.pt"
CURVE = "learning_curve.png"


class RunDirectory:
    """A folder holding one run.

    Args:
        path: the folder; created if missing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)

    @classmethod
    def existing(cls, path: str) -> RunDirectory:
        """Open a finished or interrupted run, with a clear error if it is not one."""
        if not os.path.isdir(path):
            raise LqfError(f"run directory {path!r} does not exist")
        if not os.path.isfile(os.path.join(path, CONFIG)):
            raise LqfError(f"{path!r} is not a run directory (no {CONFIG}); pass a folder made by lqf fit")
        return cls(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self.file(name))

    # -- settings and results -------------------------------------------------
    def write_config(self, config: Any, options: Any) -> None:
        write_json(
            self.file(CONFIG),
            {"lqf_version": __version__, "run": asdict(config), "method_options": asdict(options)},
        )

    def read_config(self) -> dict[str, Any]:
        return read_json(self.file(CONFIG))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.file(METRICS), metrics)

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.file(METRICS))

    # -- per-epoch log --------------------------------------------------------
    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.file(LOG), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def read_log(self) -> list[dict[str, Any]]:
        if not self.has(LOG):
            return []
        with open(self.file(LOG), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def truncate_log(self, last_epoch: int) -> None:
        """Keep only records up to ``last_epoch`` (used when resuming)."""
        kept = [r for r in self.read_log() if r.get("epoch", 0) <= last_epoch]
        write_text(self.file(LOG), "".join(json.dumps(r) + "\n" for r in kept))

    # -- model ------------------------------------------------------------------
    def save_model(self, model: torch.nn.Module, info: dict[str, Any]) -> None:
        """Weights as safetensors plus ``model.json`` (architecture and classes)."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        atomic_write(self.file(WEIGHTS), lambda tmp: save_file(state, tmp))
        write_json(self.file(MODEL_INFO), info)

    def load_state(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if not self.has(WEIGHTS):
            raise LqfError(
                f"run {self.path!r} has no {WEIGHTS}: it did not finish; "
                f"finish it with: lqf fit --resume {self.path}"
            )
        return load_file(self.file(WEIGHTS))

    # -- checkpoints ------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.file(CHECKPOINT), lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.has(CHECKPOINT):
            return None
        try:
            return torch.load(self.file(CHECKPOINT), map_location="cpu", weights_only=False)
        except Exception as err:
            raise LqfError(
                f"checkpoint {self.file(CHECKPOINT)!r} cannot be read ({type(err).__name__}); "
                "delete it to restart the run from scratch"
            ) from None
