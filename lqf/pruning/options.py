"""Options of ``lqf prune``: one dataclass, one flag per field."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lqf.config import option
from lqf.errors import LqfError
from lqf.pruning.layers import GROUPINGS
from lqf.pruning.spaces import SPACES

STRATEGIES = ("bo", "random", "uniform", "global")
REFERENCES = ("start", "current")
SCHEDULES = ("phase", "continuous")
BACK_OFF_UNTIL = ("within", "most-compressed")


@dataclass
class PruneOptions:
    """How to prune (``lqf prune`` flags mirror these fields one to one)."""

    strategy: str = option(
        "bo",
        "bo: Fine-Pruning (per-group rates by Bayesian optimisation, joint with fine-tuning); "
        "random: the same loop with random search; uniform: one rate for all layers, once; "
        "global: one magnitude threshold across layers, once",
        choices=STRATEGIES,
    )
    target_drop: float | None = option(
        None, "objective: max compression with validation accuracy drop <= this many points (default 1)"
    )
    round_drop: float | None = option(
        None,
        "accuracy drop (points) allowed in the search rounds before the last, measured before their "
        "fine-tuning, which recovers part of it (default: --target-drop); worth choosing on "
        "validation: the larger the recovery, the larger it can be",
        advanced=True,
    )
    gamma: float | None = option(
        None,
        "objective instead: max (1 - gamma) * accuracy + gamma * removed fraction, gamma in [0, 1]",
        advanced=True,
    )
    round_reference: str = option(
        "start",
        "what a search round measures the accuracy drop from: start (the unpruned model) or current "
        "(the model the previous round's fine-tuning left, so compression builds up round by round)",
        choices=REFERENCES,
        advanced=True,
    )
    keep_best: bool = option(
        True,
        "with --target-drop: after every fine-tuning phase keep the most compressed model whose "
        "validation drop is within the target, and end with it (bo, random)",
        advanced=True,
    )
    back_off: int | None = option(
        None,
        "with --target-drop and --keep-best: if no fine-tuned model is within the target, undo the "
        "last round (back to the model its fine-tuning started from) and fine-tune that for "
        "--final-epochs, then the round before, until one is within the target; at most this many "
        "rounds (default: all but the first; 0: never); each costs --final-epochs more",
        advanced=True,
    )
    back_off_until: str = option(
        "within",
        "within: back off only while no candidate is within --target-drop; most-compressed: also "
        "while the model an undone round goes back to is more compressed than the kept candidate "
        "(an early round's model within the target does not end the back-off)",
        choices=BACK_OFF_UNTIL,
        advanced=True,
    )
    allow_over_target: bool = option(
        False,
        "end with the last pruned model even when no fine-tuned candidate is within --target-drop "
        "(default: end with the unpruned model then, and exit with status 1 if the kept model is over it)",
    )
    rounds: int = option(3, "search rounds, each followed by --round-epochs of fine-tuning (bo, random)")
    trials: int = option(24, "trials per search round (quick evaluations on the validation subset)")
    startup_trials: int = option(
        8, "trials per round before the GP takes over (warm-start ones count)", advanced=True
    )
    warm_start: int = option(
        3,
        "first trials of a round from the previous round's best (threshold space: their group factors)",
        advanced=True,
    )
    global_starts: int = option(
        4,
        "first trials of every round: one global magnitude threshold at this many compression levels "
        "(threshold space: steps 1.25 to --max-step; fraction space: its per-group rates at 1.5x to 8x)",
        advanced=True,
    )
    round_epochs: int = option(1, "fine-tuning epochs after each search round", advanced=True)
    final_epochs: int = option(2, "fine-tuning epochs after the last round")
    target_compression: float | None = option(
        None, "uniform, global: the compression rate (prunable params / kept) to prune to, e.g. 5"
    )
    space: str = option(
        "threshold",
        "what the search chooses: threshold (one global magnitude threshold, set by how much more "
        "compression it adds in the round, times one factor per layer group; pruned weights stay "
        "pruned) or fraction (one pruning fraction of its own weights per layer group; a round may "
        "give pruned weights back)",
        choices=SPACES,
        advanced=True,
    )
    max_step: float = option(
        3.0, "threshold space: largest compression factor one round may add", advanced=True
    )
    group_factor: float = option(
        2.0,
        "threshold space: a group's threshold lies between the global one / and * this factor",
        advanced=True,
    )
    theta_max: float = option(
        0.95, "fraction space: largest pruning fraction of any layer group", advanced=True
    )
    groups: str = option(
        "stage", "layers sharing one pruning fraction: stage or layer", choices=GROUPINGS, advanced=True
    )
    prune_head: bool = option(False, "prune the classification head too", advanced=True)
    exclude: str = option("", "comma-separated layer names (or prefixes) never pruned", advanced=True)
    bn_batches: int = option(
        4,
        "training batches to re-estimate BatchNorm statistics with in each trial (0: keep them)",
        advanced=True,
    )
    val_subset: int | None = option(
        None, "validation images used by each trial (default: all)", advanced=True
    )
    extra_val: int = option(
        0,
        "more validation images per class for every pruning decision and report, taken from the "
        "training pool after the fine-tuned run's own images (the same train set; needs --shots)",
        advanced=True,
    )
    select_val: int = option(
        0,
        "validation images per class held out from the search: only they judge the fine-tuned "
        "candidates (--keep-best, --back-off) and give the held-out drop, so the final choice is "
        "not made on the images the search chose its rates on (0: all validation images do both)",
        advanced=True,
    )
    tune_lr: float = option(1e-3, "AdamW learning rate of the fine-tuning phases (cosine per phase)")
    tune_weight_decay: float = option(0.01, "AdamW weight decay of the fine-tuning phases", advanced=True)
    tune_schedule: str = option(
        "phase",
        "learning rate of the fine-tuning phases: phase (a cosine from --tune-lr in every phase) or "
        "continuous (one cosine over all phases; each phase goes on where the previous one stopped)",
        choices=SCHEDULES,
        advanced=True,
    )
    distill: float = option(
        0.0,
        "weight alpha in [0, 1] of distillation from the unpruned model in every fine-tuning phase: "
        "loss (1 - alpha) * cross-entropy + alpha * T^2 * KL(teacher || pruned model) at temperature "
        "--distill-temperature (0: cross-entropy alone)",
        advanced=True,
    )
    distill_temperature: float = option(4.0, "temperature T of --distill", advanced=True)
    half: bool = option(False, "store the compressed checkpoint in float16", advanced=True)
    storage: str | None = option(
        None,
        "share the search with worker processes (lqf prune --worker --storage URL --study NAME) "
        "through this Optuna storage: journal:PATH on one machine, a database URL such as "
        "postgresql://user@host/db on several",
    )
    study: str | None = option(None, "with --storage: the name of the shared study")
    heartbeat: int = option(
        10,
        "with --storage: seconds between heartbeats of a running trial; one silent for 3 heartbeats "
        "is marked failed and retried",
        advanced=True,
    )
    workers: int = option(
        0,
        "with --storage: each round of the search waits until this many worker processes have "
        "taken a trial in it (at most 600 s, then it goes on with those that came); 0 starts at once",
    )

    def __post_init__(self) -> None:
        checks = [
            (
                self.target_drop is not None and self.gamma is not None,
                "give either --target-drop or --gamma, not both",
            ),
            (
                self.target_drop is not None
                and (self.target_drop < 0 or not math.isfinite(self.target_drop)),
                f"--target-drop must be >= 0 accuracy points, got {self.target_drop}",
            ),
            (
                self.round_drop is not None and (self.round_drop < 0 or not math.isfinite(self.round_drop)),
                f"--round-drop must be >= 0 accuracy points, got {self.round_drop}",
            ),
            (
                self.round_drop is not None and self.gamma is not None,
                "--round-drop belongs to the --target-drop objective, not to --gamma",
            ),
            (
                self.gamma is not None and not 0 <= self.gamma <= 1,
                f"--gamma must be in [0, 1], got {self.gamma}",
            ),
            (self.rounds < 1, f"--rounds must be >= 1, got {self.rounds}"),
            (
                self.back_off is not None and self.back_off < 0,
                f"--back-off must be >= 0 rounds, got {self.back_off}",
            ),
            (self.trials < 1, f"--trials must be >= 1, got {self.trials}"),
            (self.startup_trials < 1, f"--startup-trials must be >= 1, got {self.startup_trials}"),
            (self.bn_batches < 0, f"--bn-batches must be >= 0, got {self.bn_batches}"),
            (self.global_starts < 0, f"--global-starts must be >= 0, got {self.global_starts}"),
            (self.warm_start < 0, f"--warm-start must be >= 0, got {self.warm_start}"),
            (self.round_epochs < 0, f"--round-epochs must be >= 0, got {self.round_epochs}"),
            (self.final_epochs < 0, f"--final-epochs must be >= 0, got {self.final_epochs}"),
            (not 0 < self.theta_max < 1, f"--theta-max must be in (0, 1), got {self.theta_max}"),
            (
                not self.max_step > 1 or not math.isfinite(self.max_step),
                f"--max-step must be a number > 1, got {self.max_step}",
            ),
            (
                not self.group_factor >= 1 or not math.isfinite(self.group_factor),
                f"--group-factor must be a number >= 1, got {self.group_factor}",
            ),
            (self.extra_val < 0, f"--extra-val must be >= 0, got {self.extra_val}"),
            (self.select_val < 0, f"--select-val must be >= 0, got {self.select_val}"),
            (
                self.val_subset is not None and self.val_subset < 1,
                f"--val-subset must be >= 1, got {self.val_subset}",
            ),
            (
                self.tune_lr <= 0 or not math.isfinite(self.tune_lr),
                f"--tune-lr must be a positive number, got {self.tune_lr}",
            ),
            (
                not 0 <= self.distill <= 1,
                f"--distill must be a weight in [0, 1], got {self.distill}",
            ),
            (
                not self.distill_temperature > 0 or not math.isfinite(self.distill_temperature),
                f"--distill-temperature must be a positive number, got {self.distill_temperature}",
            ),
            (
                self.strategy in ("uniform", "global") and self.target_compression is None,
                f"--strategy {self.strategy} needs --target-compression (e.g. 5)",
            ),
            (
                self.target_compression is not None and not self.target_compression >= 1,
                f"--target-compression must be >= 1, got {self.target_compression}",
            ),
            (
                self.target_compression is not None and self.strategy in ("bo", "random"),
                f"--target-compression is for --strategy uniform or global, not {self.strategy}; "
                "use --target-drop or --gamma",
            ),
            (
                (self.storage is None) != (self.study is None),
                "--storage and --study go together: give both to share the search, or neither",
            ),
            (
                self.storage is not None and not self.searched,
                f"--storage shares a search; --strategy {self.strategy} prunes once without one",
            ),
            (self.heartbeat < 1, f"--heartbeat must be >= 1 second, got {self.heartbeat}"),
            (self.workers < 0, f"--workers must be >= 0, got {self.workers}"),
            (
                self.workers > 0 and self.storage is None,
                "--workers is for a shared search: give --storage URL --study NAME too",
            ),
        ]
        if self.storage is not None:
            from lqf.pruning.storage import check_url

            check_url(self.storage)
        for failed, message in checks:
            if failed:
                raise LqfError(message)

    @property
    def searched(self) -> bool:
        """Whether the strategy searches rates (bo, random) rather than pruning once."""
        return self.strategy in ("bo", "random")

    @property
    def epsilon(self) -> float:
        return 1.0 if self.target_drop is None else self.target_drop

    @property
    def excluded(self) -> list[str]:
        return [name.strip() for name in self.exclude.split(",") if name.strip()]

    @property
    def back_off_rounds(self) -> int:
        """How many rounds a run may undo (never the first: undoing it would leave nothing pruned)."""
        most = max(self.rounds - 1, 0)
        return most if self.back_off is None else min(self.back_off, most)

    @property
    def tune_epochs(self) -> int:
        """Fine-tuning epochs in all, before any ``--back-off``: the same budget for every strategy."""
        return self.rounds * self.round_epochs + self.final_epochs
