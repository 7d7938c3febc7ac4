"""Optuna storages several processes share, with heartbeats that survive a killed process.

**Storages.** ``journal:PATH`` is Optuna's ``JournalStorage`` with its file backend (one machine,
or a file system whose locks work). A database URL (``postgresql://user@host/db``, ``sqlite:///f.db``,
``mysql://...``) is Optuna's ``RDBStorage``; ``postgresql://`` uses the ``psycopg`` driver.

**Killed processes.** Every process records a heartbeat of its running trial every ``heartbeat``
seconds; a running trial without one for ``GRACE`` heartbeats is marked failed and queued again with
the same parameters, at most ``RETRIES`` times. On a database that is Optuna's own mechanism
(``heartbeat_interval``, ``grace_period``, ``RetryHeartbeatStaleTrialCallback``, checked by
``fail_stale_trials`` before every trial). Optuna's journal storage has no heartbeat, so there the
same rule is kept here: the beat is a trial system attribute, and the check-fail-requeue step
holds a lock file beside the journal, so a stale trial is retried once however many processes see it.

:func:`shared_trials` is the loop every process of a shared search runs: ask, evaluate, tell,
until the study holds the number of complete trials asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lqf.errors import LqfError

#: a running trial is stale after this many heartbeats without one
GRACE = 3
#: how often a failed (stale) trial is queued again
RETRIES = 2
#: seconds between looks at the study while waiting
POLL = 0.5
#: the user attribute naming the process that runs a trial
WORKER = "lqf_worker"
BEAT = "lqf_heartbeat"
RETRY_OF = "lqf_retry_of"
RECORD = "lqf_record"
DATABASES = ("postgresql", "sqlite", "mysql")


def check_url(url: str) -> None:
    """One line for a storage URL that is neither ``journal:PATH`` nor a database URL."""
    if url.startswith("journal:"):
        if not url[len("journal:") :]:
            raise LqfError("--storage journal: needs a file, e.g. journal:runs/search.log")
        return
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in DATABASES:
        raise LqfError(
            f"--storage {url!r} is not a storage: give journal:PATH (one machine) or a database URL "
            "such as postgresql://user@host/db"
        )


@dataclass
class Storage:
    """An opened Optuna storage and how its trials' heartbeats are kept."""

    url: str
    optuna: Any
    backend: Any
    heartbeat: int

    @property
    def journal(self) -> bool:
        return self.url.startswith("journal:")

    @property
    def path(self) -> str:
        return self.url[len("journal:") :]

    # ----------------------------------------------------------------------- studies
    def study(self, name: str, sampler=None, create: bool = False):
        optuna = self.optuna
        if create:
            return optuna.create_study(
                study_name=name,
                storage=self.backend,
                sampler=sampler,
                direction="maximize",
                load_if_exists=True,
            )
        return optuna.load_study(study_name=name, storage=self.backend, sampler=sampler)

    def exists(self, name: str) -> bool:
        return any(s.study_name == name for s in self.optuna.get_all_study_summaries(self.backend))

    # ----------------------------------------------------------------------- heartbeats
    def beat(self, trial_id: int) -> None:
        if self.journal:
            self.backend.set_trial_system_attr(trial_id, BEAT, time.time())
        else:
            self.backend.record_heartbeat(trial_id)

    @contextlib.contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        """Heartbeats of ``trial_id`` from a thread while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while True:
                with contextlib.suppress(Exception):  # a lost beat only risks a retry
                    self.beat(trial_id)
                if stop.wait(self.heartbeat):
                    return

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_stale(self, study) -> None:
        """Mark running trials without a recent heartbeat failed and queue them again."""
        optuna = self.optuna
        if not self.journal:
            optuna.storages.fail_stale_trials(study)
            return
        with open(self.path + ".lqf-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                now = time.time()
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    last = t.system_attrs.get(BEAT)
                    if last is None and t.datetime_start is not None:
                        last = t.datetime_start.timestamp()
                    if last is None or now - last <= GRACE * self.heartbeat:
                        continue
                    self.backend.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
                    retries = int(t.user_attrs.get("lqf_retries", 0))
                    if retries < RETRIES:
                        study.enqueue_trial(
                            dict(t.params),
                            user_attrs={RETRY_OF: t.number, "lqf_retries": retries + 1},
                            skip_if_exists=False,
                        )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def open_storage(url: str, heartbeat: int = 10) -> Storage:
    """The storage of ``url`` (see the module docstring), with heartbeats every ``heartbeat`` s."""
    from lqf.pruning.search import _optuna

    check_url(url)
    optuna = _optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:") :]
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise LqfError(f"--storage {url!r}: folder {folder!r} does not exist; create it first")
        return Storage(url, optuna, JournalStorage(JournalFileBackend(path)), heartbeat)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=GRACE * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=RETRIES
                ),
            )
    except ModuleNotFoundError as exc:
        raise LqfError(
            f"--storage {url.split('@')[-1]!r} needs the database driver {exc.name!r}: "
            "pip install 'psycopg[binary]' (PostgreSQL) or the driver of your database"
        ) from None
    except Exception as exc:  # the driver's own message, on one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LqfError(f"--storage: cannot open the database ({first})") from None
    return Storage(url, optuna, backend, heartbeat)


def retry_of(trial) -> int | None:
    """The number of the failed trial this one repeats, if it is a retry."""
    if RETRY_OF in trial.user_attrs:
        return int(trial.user_attrs[RETRY_OF])
    return trial.system_attrs.get("failed_trial")


def shared_trials(
    storage: Storage,
    study,
    *,
    distributions: Mapping[str, Any],
    evaluate: Callable[[dict[str, float]], dict[str, Any]],
    trials: int,
    stop: Callable[[], bool] = lambda: False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    worker: str | None = None,
) -> None:
    """Add trials to ``study`` until it holds ``trials`` complete ones (or ``stop()``).

    ``evaluate(theta)`` returns the trial's record: ``value`` (told to the study), ``violation``
    (its constraint, or ``None``) and whatever else is kept; the record is stored with the trial
    (user attribute ``lqf_record``, with ``number``, ``worker`` and ``retry_of`` added).
    Trials another process is running count as pending; a finished trial is never repeated.
    """
    optuna = storage.optuna
    state = optuna.trial.TrialState
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    while True:
        storage.fail_stale(study)
        all_trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == state.COMPLETE for t in all_trials)
        if complete >= trials or stop():
            return
        pending = sum(t.state in (state.RUNNING, state.WAITING) for t in all_trials)
        waiting = sum(t.state == state.WAITING for t in all_trials)
        if not waiting and complete + pending >= trials:
            time.sleep(POLL)  # the rest are running elsewhere; take over one that fails
            continue
        start = time.perf_counter()
        trial = study.ask(dict(distributions))
        asked = time.perf_counter() - start
        trial.set_user_attr(WORKER, worker)  # who runs it, before it finishes (for --workers)
        theta = {name: float(trial.params[name]) for name in distributions}
        with storage.beating(trial._trial_id):
            record = dict(evaluate(theta))
        frozen = study._storage.get_trial(trial._trial_id)
        record.update(
            number=trial.number,
            worker=worker,
            retry_of=retry_of(frozen),
            warm="fixed_params" in frozen.system_attrs and retry_of(frozen) is None,
            sampler_seconds=asked,
        )
        violation = record.pop("violation", None)
        value = record["value"]
        try:
            trial.set_user_attr(RECORD, record)
            if violation is not None:
                trial.set_constraint("accuracy_drop", violation)
            study.tell(trial, value)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # failed as stale meanwhile (this process was too slow): its retry counts instead
        if on_record is not None:
            on_record(record)


def records(study) -> list[dict[str, Any]]:
    """The records of the study's complete trials, by trial number."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return [dict(t.user_attrs[RECORD]) for t in sorted(complete, key=lambda t: t.number)]
