"""A search shared by several processes: one Optuna study per round, in a storage all of them reach.

    lqf prune --from runs/ft --storage journal:runs/search.log --study ft --out runs/pruned
    lqf prune --worker --storage journal:runs/search.log --study ft      # as many as you like

**Roles.** The process started without ``--worker`` is the *coordinator*: it owns the rounds
(search, prune, fine-tune), the run directory and every decision, as a one-process run does. At
the start of round ``r`` it writes the weights and masks the round searches from
(``search-state.pt`` in the run directory), opens the study ``NAME.r{r}`` with the round's
objective in its attributes, queues the warm starts, and evaluates trials itself. *Workers* only
evaluate trials: each loads the run's saved settings, the same data split and model, then for every
round the round's state, and adds trials to the round's study until it holds ``--trials`` finished
ones. The coordinator then reads them all (each trial carries its record) and goes on alone:
fine-tuning is not shared (run it data-parallel with ``lqf fit`` under torchrun if it is the
bottleneck). The study ``NAME`` itself holds the coordinator's run directory, the current round and
a liveness time; workers exit when the coordinator says it is done, and with one line when it has
not been heard from for ``STALE_COORDINATOR`` heartbeats.

Workers read the run directory, so on several machines it must be on a shared file system (as it
is on a cluster). Which trials a round ends with depends on how fast each process is; the choice
among them is the one-process rule (:meth:`~lqf.pruning.objective.Objective.best`).

Storages and heartbeats: :mod:`lqf.pruning.storage` (a killed worker's trial is failed and retried).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from lqf.errors import LqfError
from lqf.pruning.objective import Objective
from lqf.pruning.search import clip_to, distributions_of, make_sampler, trial_record
from lqf.pruning.storage import POLL, WORKER, Storage, open_storage, records, shared_trials

#: a worker gives up when the coordinator has been silent for this many heartbeats
STALE_COORDINATOR = 30
#: seconds a worker waits for its coordinator to open the study
WAIT_FOR_START = 600
#: the weights a round searches from, in the run directory (removed when the run ends)
ROUND_STATE = "search-r{}.pt"


def round_study(name: str, round_index: int) -> str:
    return f"{name}.r{round_index}"


def evaluator(measure: Callable[[Mapping[str, float]], float], space, objective: Objective, round_index: int):
    """``theta -> record`` for :func:`~lqf.pruning.storage.shared_trials`: the trial's accuracy by
    ``measure`` and its record (:func:`~lqf.pruning.search.trial_record`) with the constraint."""

    def evaluate(theta: dict[str, float]) -> dict[str, Any]:
        start = time.perf_counter()
        accuracy = float(measure(theta))
        record = trial_record(
            theta,
            accuracy,
            space=space,
            objective=objective,
            round_index=round_index,
            number=-1,
            warm=False,
            eval_seconds=time.perf_counter() - start,
        )
        record["violation"] = objective.violation(accuracy) if objective.constrained else None
        return record

    return evaluate


class Coordinator:
    """The coordinator's side: the control study, its liveness beat and each round's study."""

    def __init__(
        self,
        storage: Storage,
        name: str,
        run_folder: str,
        *,
        workers: int = 0,
        say: Callable[[str], None] = lambda text: None,
        wait_for_workers: float = WAIT_FOR_START,
    ) -> None:
        self.storage, self.name = storage, name
        self.workers, self.say, self.wait_for_workers = workers, say, wait_for_workers
        self.control = storage.study(name, create=True)
        owner = self.control.user_attrs.get("lqf_run")
        folder = os.path.abspath(run_folder)
        if owner is not None and owner != folder:
            raise LqfError(
                f"study {name!r} belongs to the prune run {owner!r}; choose another --study for {folder!r}"
            )
        self.control.set_user_attr("lqf_run", folder)
        self.control.set_user_attr("lqf_cwd", os.getcwd())  # what the run's relative paths start from
        self.control.set_user_attr("heartbeat", storage.heartbeat)
        self.control.set_user_attr("done", False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._alive, daemon=True)
        self._thread.start()

    def _alive(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.control.set_user_attr("alive", time.time())
            if self._stop.wait(self.storage.heartbeat):
                return

    def open_round(self, round_index: int, attrs: Mapping[str, Any], sampler, warm: list[dict[str, float]]):
        """The round's study (created, or the one a resumed run left), its attributes set and the
        warm starts queued (only into a new study: a resumed round keeps what it has)."""
        study = self.storage.study(round_study(self.name, round_index), sampler=sampler, create=True)
        new = not study.get_trials(deepcopy=False)
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        study.set_user_attr("closed", False)
        if new:
            for point in warm:
                study.enqueue_trial(point, skip_if_exists=False)
        self.control.set_user_attr("round", round_index)
        return study

    def await_workers(self, study, round_index: int) -> int:
        """Wait until ``self.workers`` worker processes have taken a trial of the round's study
        (at most ``wait_for_workers`` seconds); returns how many came."""
        deadline = time.monotonic() + self.wait_for_workers
        while True:
            came = {t.user_attrs.get(WORKER) for t in study.get_trials(deepcopy=False)} - {
                None,
                "coordinator",
            }
            if len(came) >= self.workers:
                return len(came)
            if time.monotonic() > deadline:
                self.say(
                    f"round {round_index}: {len(came)} of {self.workers} worker(s) came within "
                    f"{self.wait_for_workers:.0f} s; going on with them"
                )
                return len(came)
            time.sleep(POLL)

    def search(
        self,
        round_index: int,
        *,
        space,
        measure,
        objective: Objective,
        trials: int,
        sampler: str,
        seed: int,
        startup_trials: int,
        warm: list[Mapping[str, float]],
        state: dict[str, Any],
        folder: str,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Round ``round_index`` shared: ``state`` (weights, masks) written for the workers, the
        round's study opened, trials evaluated here too until it holds ``trials`` complete ones;
        returns the records of all of them (every process's)."""
        import torch

        from lqf.io import atomic_write

        name = ROUND_STATE.format(round_index)
        atomic_write(os.path.join(folder, name), lambda tmp: torch.save(state, tmp))
        attrs = {
            "state": name,
            "reference": objective.reference,
            "target_drop": objective.target_drop,
            "gamma": objective.gamma,
            "trials": trials,
            "sampler": sampler,
            "startup_trials": startup_trials,
        }
        study = self.open_round(
            round_index,
            attrs,
            make_sampler(sampler, seed=seed, startup_trials=startup_trials),
            [clip_to(space, p) for p in warm],
        )
        if self.workers:
            self.await_workers(study, round_index)
        shared_trials(
            self.storage,
            study,
            distributions=distributions_of(space),
            evaluate=evaluator(measure, space, objective, round_index),
            trials=trials,
            on_record=on_record,
            worker="coordinator",
        )
        study.set_user_attr("closed", True)
        return records(study)

    def finish(self, folder: str, rounds: int) -> None:
        """The run is over: workers may leave; the round states are removed."""
        self._stop.set()
        self._thread.join()
        self.control.set_user_attr("done", True)
        for r in range(1, rounds + 1):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, ROUND_STATE.format(r)))

    def stop(self) -> None:
        """Stop the liveness beat (the run was interrupted; workers give up after a while)."""
        self._stop.set()


def work(
    url: str,
    name: str,
    load: Callable[[str], tuple[Any, Any]],
    *,
    say: Callable[[str], None] = lambda text: None,
    wait_for_start: float = WAIT_FOR_START,
) -> int:
    """Be a worker of study ``name`` in ``url`` until its coordinator is done; returns the number
    of trials this process evaluated.

    ``load(run_folder)`` returns ``(measure, make_space)`` for the coordinator's run: a
    :class:`~lqf.pruning.measure.MaskedAccuracy` on the run's model and its validation subset, and
    ``space_of(state)``, which loads a round's ``state`` into that model and returns the round's
    search space on it. The process moves to the coordinator's working directory where it exists
    here, so relative paths in the run's settings mean what they meant there.
    """
    storage = open_storage(url)
    deadline = time.monotonic() + wait_for_start
    while not storage.exists(name):
        if time.monotonic() > deadline:
            raise LqfError(
                f"no study {name!r} in {url} after {wait_for_start:.0f} s: start the coordinator "
                "(lqf prune ... --storage URL --study NAME) first, or check --storage and --study"
            )
        time.sleep(POLL)
    heartbeat = int(storage.study(name).user_attrs.get("heartbeat", storage.heartbeat))
    storage = open_storage(url, heartbeat)
    control = storage.study(name)
    folder = control.user_attrs["lqf_run"]
    cwd = control.user_attrs.get("lqf_cwd")
    if cwd and os.path.isdir(cwd):
        os.chdir(
            cwd
        )  # the run's relative paths (its --from run, an image folder) as the coordinator saw them
    measure, space_of = load(folder)
    me = f"{socket.gethostname()}:{os.getpid()}"
    say(f"lqf prune worker {me}: study {name!r} of the run {folder}")
    seen: set[int] = set()
    count = 0
    while True:
        attrs = control.user_attrs
        if attrs.get("done"):
            say(f"lqf prune worker {me}: the coordinator is done; {count} trial(s) evaluated here")
            return count
        r = attrs.get("round")
        if r is None or r in seen:
            alive = attrs.get("alive")
            if alive is not None and time.time() - float(alive) > STALE_COORDINATOR * heartbeat:
                raise LqfError(
                    f"the coordinator of study {name!r} has been silent for "
                    f"{time.time() - float(alive):.0f} s; start this worker again once it runs "
                    "(lqf prune --resume)"
                )
            time.sleep(POLL)
            continue
        seen.add(r)
        study = storage.study(round_study(name, r))
        a = study.user_attrs
        if a.get("closed"):
            continue
        import torch

        space = space_of(torch.load(os.path.join(folder, a["state"]), map_location="cpu", weights_only=False))
        measure.masks_of = space.masks
        objective = Objective(reference=a["reference"], target_drop=a["target_drop"], gamma=a["gamma"])
        seed = (
            zlib.crc32(me.encode()) + 1000 * r
        ) % 2**31  # not the coordinator's: two samplers would propose alike
        study = storage.study(
            round_study(name, r),
            sampler=make_sampler(a["sampler"], seed=seed, startup_trials=a["startup_trials"]),
        )
        before = count

        def counted(record: dict[str, Any]) -> None:
            nonlocal count
            count += 1

        shared_trials(
            storage,
            study,
            distributions=distributions_of(space),
            evaluate=evaluator(measure, space, objective, r),
            trials=int(a["trials"]),
            stop=lambda study=study: bool(study.user_attrs.get("closed")),
            on_record=counted,
            worker=me,
        )
        say(f"lqf prune worker {me}: round {r}: {count - before} trial(s) evaluated here")
