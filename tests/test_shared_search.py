"""Searches shared through a storage: several processes, one study, a worker killed mid-trial.

Run against Optuna's journal file and against PostgreSQL (``LQF_TEST_POSTGRES``: a database URL;
``.ci/run`` starts a throw-away server and sets it; without it the PostgreSQL cases are skipped
with one line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from lqf.errors import LqfError  # noqa: E402
from lqf.pruning.storage import WORKER as WORKER_ATTR  # noqa: E402
from lqf.pruning.storage import check_url, open_storage, records, retry_of  # noqa: E402

from .conftest import write_image_folder  # noqa: E402

POSTGRES = os.environ.get("LQF_TEST_POSTGRES")
ROOT = Path(__file__).resolve().parent.parent


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "journal":
        return f"journal:{tmp_path / 'search.log'}"
    if not POSTGRES:
        pytest.skip("PostgreSQL is not running here: set LQF_TEST_POSTGRES to a database URL (.ci/run does)")
    return POSTGRES


STORAGES = ["journal", "postgresql"]

#: a worker of a toy study: each trial writes its start (and pid) to a log, then sleeps
WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    import optuna
    from lqf.pruning.storage import open_storage, shared_trials

    url, name, log = sys.argv[1:4]
    seconds, trials = float(sys.argv[4]), int(sys.argv[5])
    storage = open_storage(url, heartbeat=1)
    study = storage.study(name, sampler=optuna.samplers.RandomSampler(seed=os.getpid()))

    def evaluate(theta):
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "x": theta["x"]}) + "\\n")
        time.sleep(seconds)
        return {"value": -(theta["x"] - 0.3) ** 2, "violation": None, "x": theta["x"]}

    shared_trials(
        storage, study, distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
        evaluate=evaluate, trials=trials,
    )
    """
)


def _started(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("kind", STORAGES)
def test_a_worker_killed_mid_trial_is_failed_and_its_trial_retried(kind: str, tmp_path: Path) -> None:
    url = _url(kind, tmp_path)
    name = f"toy-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url, heartbeat=1)
    storage.study(name, create=True)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    trials = 6
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(log: Path, seconds: float) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), url, name, str(log), str(seconds), str(trials)], env=env
        )

    doomed_log = tmp_path / "doomed.jsonl"
    doomed = start(doomed_log, 60.0)  # its first trial never ends by itself
    deadline = time.monotonic() + 60
    while not _started(doomed_log):
        assert time.monotonic() < deadline and doomed.poll() is None, "the worker did not start a trial"
        time.sleep(0.1)
    steady_log = tmp_path / "steady.jsonl"
    steady = start(steady_log, 0.2)
    time.sleep(0.5)
    doomed.send_signal(signal.SIGKILL)  # in the middle of its trial
    doomed.wait()
    assert steady.wait(timeout=120) == 0

    study = storage.study(name)
    trials_by_state: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        trials_by_state.setdefault(t.state.name, []).append(t)
    (killed,) = trials_by_state["FAIL"]  # exactly the killed worker's trial failed
    assert set(trials_by_state) == {"COMPLETE", "FAIL"}
    complete = trials_by_state["COMPLETE"]
    assert len(complete) == trials
    (x_killed,) = [r["x"] for r in _started(doomed_log)]
    assert killed.params["x"] == pytest.approx(x_killed, abs=0)
    retries = [t for t in complete if retry_of(t) is not None]
    (retry,) = retries  # retried once, with the same theta
    assert retry.params == killed.params
    # every finished trial recorded exactly once: one evaluation each (the steady worker's log),
    # one record each, under its own number
    evaluated = _started(steady_log)
    assert len(evaluated) == trials
    assert sorted(r["x"] for r in evaluated) == sorted(t.params["x"] for t in complete)
    kept = records(study)
    assert [r["number"] for r in kept] == sorted(t.number for t in complete)
    assert len({r["number"] for r in kept}) == trials
    assert all(
        r["x"] == t.params["x"] for r, t in zip(kept, sorted(complete, key=lambda t: t.number), strict=True)
    )
    assert [r["retry_of"] for r in kept if r["number"] == retry.number] == [killed.number]


def test_bad_storage_urls_give_one_line(tmp_path: Path) -> None:
    for url, fragment in [
        ("redis://host/0", "journal:PATH"),
        ("runs/search.log", "journal:PATH"),
        ("journal:", "needs a file"),
    ]:
        with pytest.raises(LqfError, match=fragment):
            check_url(url)
    with pytest.raises(LqfError, match="does not exist"):
        open_storage(f"journal:{tmp_path / 'no' / 'such' / 'search.log'}")
    with pytest.raises(LqfError, match="cannot open the database"):
        open_storage("postgresql://nobody@127.0.0.1:1/none")


def test_a_prune_run_shares_its_search_with_a_worker(tiny_model_spec: str, tmp_path: Path) -> None:
    """``lqf prune --storage journal:... --study S`` and ``lqf prune --worker`` in two processes: the
    run finishes, each round holds ``--trials`` records from both processes, and every trial the
    worker evaluated in round 1 (which searches from the fine-tuned model) has the accuracy the
    one-process measure gives for its ``theta``."""
    import torch

    from lqf.cli.main import main
    from lqf.cli.prune import saved_settings
    from lqf.data import load_data
    from lqf.pruning.measure import search_inputs
    from lqf.pruning.spaces import make_space
    from lqf.runs.fit import load_run

    folder = write_image_folder(tmp_path / "images", classes=3, per_class=20, size=12)
    common = ["--data", f"imagefolder:{folder}", "--image-size", "12", "--val-per-class", "8", "--quiet"]
    source, out = tmp_path / "ft", tmp_path / "pruned"
    fit = ["fit", "--model", tiny_model_spec, *common, "--epochs", "20", "--lr", "0.01", "--bn", "train"]
    assert main([*fit, "--out", str(source)]) == 0
    assert json.loads((source / "metrics.json").read_text())["val_accuracy"] > 0.5  # something to lose
    url = f"journal:{tmp_path / 'search.log'}"
    shared = ["--storage", url, "--study", "tiny"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lqf = [sys.executable, "-m", "lqf", "prune"]
    worker = subprocess.Popen([*lqf, "--worker", *shared], env=env, stdout=subprocess.PIPE, text=True)
    coordinator = subprocess.run(
        [*lqf, "--from", str(source), *shared, "--heartbeat", "1", "--rounds", "2", "--trials", "30"]
        + ["--workers", "1"]  # every round waits for the worker: without it, it may finish first
        + [
            "--strategy",
            "random",
            "--max-step",
            "30",
            "--round-epochs",
            "1",
            "--final-epochs",
            "0",
            "--allow-over-target",
        ]
        + ["--quiet", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert coordinator.returncode == 0, coordinator.stderr
    stdout, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, stdout
    assert "the coordinator is done" in stdout
    history = json.loads((out / "history.json").read_text())
    for r in (1, 2):
        kept = [t for t in history["trials"] if t["round"] == r]
        assert len(kept) >= 30 and len({t["number"] for t in kept}) == len(kept)
    for r in (1, 2):  # --workers 1: the worker took a trial of each round before the coordinator began
        assert any(t["worker"] != "coordinator" for t in history["trials"] if t["round"] == r), r
    assert not list(out.glob("search-r*.pt"))  # the round states are removed at the end
    # round 1 again, in this process: the same accuracy for every theta, whoever evaluated it
    config, _, options, _ = saved_settings(str(out))
    data = load_data(
        config.data, image_size=config.image_size, val_per_class=config.val_per_class, seed=config.seed
    )
    model = load_run(str(source))[2].eval()
    inputs = search_inputs(model, data, config, options)
    space = make_space(
        options.space,
        inputs.layers,
        theta_max=options.theta_max,
        max_step=options.max_step,
        group_factor=options.group_factor,
    )
    inputs.measure.masks_of = space.masks
    first = [t for t in history["trials"] if t["round"] == 1]
    assert len({t["accuracy"] for t in first}) >= 3  # the trials differ, so the comparison can fail
    with torch.no_grad():
        for t in first:
            assert inputs.measure(t["theta"]) == t["accuracy"], t


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--storage", "journal:x.log"], "--storage and --study go together"),
        (["--study", "s"], "--storage and --study go together"),
        (["--storage", "redis://h/0", "--study", "s"], "journal:PATH"),
        (
            [
                "--strategy",
                "global",
                "--target-compression",
                "2",
                "--storage",
                "journal:x.log",
                "--study",
                "s",
            ],
            "prunes once",
        ),
        (["--storage", "journal:x.log", "--study", "s", "--heartbeat", "0"], "--heartbeat must be >= 1"),
        (["--workers", "2"], "--workers is for a shared search"),
        (["--storage", "journal:x.log", "--study", "s", "--workers", "-1"], "--workers must be >= 0"),
        (["--worker", "--storage", "journal:x.log"], "--worker needs --storage URL and --study NAME"),
        (["--worker", "--storage", "journal:x.log", "--study", "s", "--trials", "3"], "drop --trials"),
    ],
)
def test_bad_shared_search_flags_give_one_line(flags, fragment, tiny_model_spec, tmp_path, capsys) -> None:
    from lqf.cli.main import main

    start = [] if "--worker" in flags else ["--model", tiny_model_spec, "--out", str(tmp_path / "p")]
    code = main(["prune", *start, *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_a_worker_without_its_coordinator_gives_up_with_one_line(tmp_path, capsys) -> None:
    from lqf.pruning.shared import work

    with pytest.raises(LqfError, match="start the coordinator"):
        work(f"journal:{tmp_path / 'search.log'}", "nobody", lambda folder: None, wait_for_start=0.5)


def test_a_study_of_another_run_is_refused_with_one_line(tmp_path) -> None:
    from lqf.pruning.shared import Coordinator

    storage = open_storage(f"journal:{tmp_path / 'search.log'}", heartbeat=1)
    first = Coordinator(storage, "s", str(tmp_path / "a"))
    first.stop()
    with pytest.raises(LqfError, match="belongs to the prune run"):
        Coordinator(storage, "s", str(tmp_path / "b"))
    again = Coordinator(storage, "s", str(tmp_path / "a"))  # its own run, resumed: accepted
    again.stop()


def test_a_round_waits_for_its_workers_then_goes_on_with_those_that_came(tmp_path) -> None:
    """``--workers N``: the coordinator's round begins once N distinct workers have taken a trial of
    it, and after ``wait_for_workers`` seconds with fewer it says so and goes on."""
    from lqf.pruning.shared import Coordinator, round_study

    storage = open_storage(f"journal:{tmp_path / 'search.log'}", heartbeat=1)
    said: list[str] = []
    coordinator = Coordinator(
        storage, "s", str(tmp_path / "a"), workers=2, say=said.append, wait_for_workers=1.0
    )
    try:
        study = coordinator.open_round(1, {}, None, [])
        for worker in ("host:1", "coordinator", "host:1"):  # one distinct worker, asked twice
            trial = study.ask()
            trial.set_user_attr(WORKER_ATTR, worker)
        assert coordinator.await_workers(study, 1) == 1
        assert len(said) == 1 and "1 of 2 worker(s) came" in said[0], said
        study.ask().set_user_attr(WORKER_ATTR, "host:2")
        said.clear()
        assert coordinator.await_workers(storage.study(round_study("s", 1)), 1) == 2 and not said
    finally:
        coordinator.stop()
