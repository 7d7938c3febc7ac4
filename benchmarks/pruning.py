"""Fine-Pruning benchmark: per-group rates by Bayesian optimisation vs three baselines.

For each data set (fashion-mnist, animal-mnist; 200 images per class, 50
validation images per class, 64 px) ``efficientnet_lite0`` is fine-tuned once
with the recipe chosen on validation in ``benchmarks/baseline.py``, and that
run is pruned by

* ``bo``: Fine-Pruning (``lqf prune --strategy bo --target-drop 1``);
* ``random``: the same loop with random search instead of the GP;
* ``uniform``: one fraction for every layer, pruned once, then fine-tuned;
* ``global``: one magnitude threshold across layers, pruned once, then fine-tuned;

with the same number of fine-tuning epochs (``rounds * round_epochs +
final_epochs``). The one-shot baselines are run at the compression Fine-Pruning
reached and at a lower level (0.7x of it), so each method's largest
compression within one point of validation accuracy can be read off, and the
accuracies compared at matched compression. bo and random share the search's
``--round-drop``, chosen per data set on validation (seed 0) by running bo at
each round drop of ``ROUND_DROPS``; the other settings of ``SETTINGS`` are
the earlier configurations, kept reproducible.

Every step is a separate ``python -m lqf`` process, cached in
``benchmarks/runs/pruning/`` (an interrupted prune run is resumed); with
``--lock FILE`` each step waits for ``flock FILE``, so a shared machine is
taken one step at a time.

Usage::

    python benchmarks/pruning.py --seeds 0 1 2     # about 6 h of CPU (one core per run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(HERE, "runs", "pruning")
sys.path.insert(0, HERE)

from common import hardware  # noqa: E402

#: fine-tuning learning rate chosen on validation at 200 shots/class (benchmarks/results/baseline.md)
FINETUNE_LR = {"fashion-mnist": "3e-3", "animal-mnist": "1e-3"}
FINETUNE = ["--model", "efficientnet_lite0", "--shots", "200", "--val-per-class", "50", "--image-size", "64"]
FINETUNE += ["--batch-size", "64", "--seed", "0", "--bn", "train", "--head-lr-scale", "1"]
#: fine-tuning epochs (animal-mnist: fewer, to keep the benchmark's CPU time in budget)
FINETUNE_EPOCHS = {"fashion-mnist": "15", "animal-mnist": "6"}
#: the learning rate of the fine-tuning phases in the settings before `largeval` (the default then)
TUNE_LR = ["--tune-lr", "3e-4"]
BUDGET = ["--rounds", "3", "--round-epochs", "1", "--final-epochs", "1", *TUNE_LR]  # 4 epochs in all
#: the per-group fractions the first settings searched (the default before the threshold space)
SEARCH = [
    "--target-drop",
    "1",
    "--trials",
    "14",
    "--startup-trials",
    "5",
    "--space",
    "fraction",
    "--back-off",
    "0",
]
#: 8 fine-tuning epochs: four rounds of one epoch, then four
ROUNDS8 = ["--rounds", "4", "--round-epochs", "1", "--final-epochs", "4"]
BUDGET8 = [*ROUNDS8, *TUNE_LR]
#: the defaults since: fine-tuning phases at 1e-3 (the --tune-lr default), and 150 more validation
#: images per class (2,000 in all; the training images unchanged) for every decision
LARGEVAL8 = [*ROUNDS8, "--extra-val", "150"]
#: 450 more validation images per class (5,000 in all), for fashion-mnist's large training pool
VAL5K8 = [*ROUNDS8, "--extra-val", "450"]
#: distillation from the unpruned model in every fine-tuning phase (weight 0.5, temperature 4)
DISTILL = ["--distill", "0.5"]
#: the threshold space, drops measured from the current model (round drop chosen on validation,
#: fashion-mnist seed 0: benchmarks/results/pruning_budget.md)
THRESHOLD_SEARCH = ["--target-drop", "1", "--space", "threshold", "--round-reference", "current"]
THRESHOLD_SEARCH += ["--max-step", "3", "--trials", "12", "--startup-trials", "5"]
#: the settings run before --back-off existed (it is on by default since): they keep it off
NO_BACK_OFF = ["--back-off", "0"]
SEARCH8 = [*THRESHOLD_SEARCH, "--round-drop", "3", *NO_BACK_OFF]
#: test images of the first settings (a fixed stratified subset for fashion-mnist; animal-mnist has
#: 2,000); the threshold setting tests on the whole test split
MAX_TEST = ["--max-test", "2000"]
LEVELS = (1.0, 0.7)
#: the one-shot baselines, pruned once to a compression matched to bo's
ONE_SHOT = ("uniform", "global")
#: the round drops beyond 3 that the `largeval` search is run at to choose one per data set
LARGER_DROPS = ("4", "5", "6", "10", "15")
#: the round drops chosen without back-off (fashion-mnist 5, animal-mnist 10), run with it
BACK_OFF_DROPS = ("5", "10")
#: settings: (flags of every prune run incl. the fine-tuning budget, extra flags of the searched ones)
SETTINGS = {
    # every trial of the search proposed by the sampler (random starts, then the GP)
    "plain": (BUDGET, [*SEARCH, "--global-starts", "0"]),
    # the first trials of each round are the rates of a global magnitude threshold
    "seeded": (BUDGET, SEARCH),
    # seeded, and rounds 1-2 may lose up to 4 points before their fine-tuning recovers them
    "gradual": (BUDGET, [*SEARCH, "--round-drop", "4"]),
    # the threshold space (the default), 8 epochs, compression built up round by round
    "threshold": (BUDGET8, SEARCH8),
    # the same search; the phases fine-tune at 1e-3; 2,000 validation images
    "largeval": (LARGEVAL8, SEARCH8),
    # the same with a larger round drop: the candidates the round drop is chosen from, per data
    # set, on its validation split (seed 0)
    **{
        f"largeval-drop{d}": (LARGEVAL8, [*THRESHOLD_SEARCH, "--round-drop", d, *NO_BACK_OFF])
        for d in LARGER_DROPS
    },
    # the chosen round drop of each data set with --back-off (the default): a run with no model
    # within the target undoes its rounds from the last until one is
    **{f"backoff-drop{d}": (LARGEVAL8, [*THRESHOLD_SEARCH, "--round-drop", d]) for d in BACK_OFF_DROPS},
    # backoff-drop5 with 5,000 validation images (450 more per class): does a larger validation set
    # shrink the gap between bo's validation and test drops?
    "val5k-backoff-drop5": (VAL5K8, [*THRESHOLD_SEARCH, "--round-drop", "5"]),
    # the same 5,000 images, 3,000 of them held out of the search to judge the candidates alone
    # (--select-val 300): is the gap a selection effect of the search?
    "heldout-backoff-drop5": ([*VAL5K8, "--select-val", "300"], [*THRESHOLD_SEARCH, "--round-drop", "5"]),
    # the same, every method's fine-tuning phases distilled from the unpruned model (--distill 0.5,
    # chosen on the held-out images of fashion-mnist seed 0's global@1 run among 0, 0.5 and 0.9)
    "distill-heldout-backoff-drop5": (
        [*VAL5K8, "--select-val", "300", *DISTILL],
        [*THRESHOLD_SEARCH, "--round-drop", "5"],
    ),
    # the same, and a bo run whose only model within the target is an early round's backs off too
    # (--back-off-until most-compressed: while the model an undone round goes back to is more
    # compressed than the kept one)
    "distill-heldout-undo-drop5": (
        [*VAL5K8, "--select-val", "300", *DISTILL],
        [*THRESHOLD_SEARCH, "--round-drop", "5", "--back-off-until", "most-compressed"],
    ),
    # the same at round drop 3: is the round drop chosen without distillation still the best one?
    "distill-heldout-undo-drop3": (
        [*VAL5K8, "--select-val", "300", *DISTILL],
        [*THRESHOLD_SEARCH, "--round-drop", "3", "--back-off-until", "most-compressed"],
    ),
}
#: settings shown in a summary of their own when they have runs
EXTRA_SUMMARIES = (
    "val5k-backoff-drop5",
    "heldout-backoff-drop5",
    "distill-heldout-backoff-drop5",
    "distill-heldout-undo-drop5",
    "distill-heldout-undo-drop3",
)
#: the `largeval` search at these round drops, each run on seed 0 of each data set; the one that keeps
#: the most compression within 1 point of validation accuracy is that data set's setting
ROUND_DROPS = {"3": "largeval", **{d: f"largeval-drop{d}" for d in LARGER_DROPS}}
#: the default: choose the round drop per data set (seed 0, validation), then run every method
#: with it on every seed; the summary and the plot show these settings
CHOSEN = "chosen"
#: the setting of the summary before the round drop was chosen per data set
LATEST = "largeval"
#: settings whose test accuracy is measured on a fixed 2,000-image subset
SUBSET_TEST = ("plain", "seeded", "gradual", "budget")
EXECUTED: list[str] = []
HEADER = """`efficientnet_lite0` (ImageNet weights), 64 px, 200 training images per class, 50
validation images per class, fine-tuned once per data set and seed (the seed also draws the split;
the learning rate chosen in baseline.md; 15 epochs on fashion-mnist, 6 on animal-mnist), then
pruned. Within a setting every method gets the same fine-tuning budget after pruning (AdamW; the
`largeval` setting at 1e-3, the default, and 8 epochs; the `threshold` setting at 3e-4 and 8
epochs; the earlier settings at 3e-4 and 4 epochs; the flags of each setting are given below).
Each trial of bo/random evaluates on the whole validation split after re-estimating BatchNorm
statistics on 4 training batches: in the `largeval` setting 2,000 images (the 500 of the split and
150 more per class from the training pool, `--extra-val 150`; the training images are the same),
in the others the 500 of the split; drops on validation are measured on the same images. Test
accuracy: the `largeval` and `threshold` settings on the whole test split (fashion-mnist 10,000
images, animal-mnist 2,000); the earlier settings on a fixed stratified subset of 2,000
(`--max-test 2000`). Compression = parameters of the 49
prunable layers (all Conv2d, depthwise included; the head is not pruned) divided by those kept.
Drops are in accuracy points against the unpruned fine-tuned model. The uniform and global
baselines are pruned once, at bo's compression (`@1`) and at 0.7 times it (`@0.7`); random is
bo's loop with random search. The default command chooses the round drop of bo and random per
data set on validation (seed 0, next section) and runs every method with it on every seed; the
`largeval` setting is the same search at round drop 3. The `val5k-backoff-drop5` setting
(fashion-mnist) is `backoff-drop5` with 5,000 validation images (`--extra-val 450`) for every
decision and validation drop, run for bo and global pruning only (`--baselines global
--no-random`). The `heldout-backoff-drop5` setting splits the same 5,000 images: the last 300 per
class (3,000) are held out of the search (`--select-val 300`), which sees the other 2,000 (as in
`backoff-drop5`); only the held-out images judge the fine-tuned candidates (keep-best, back-off),
and its val drop is theirs. The `distill-heldout-backoff-drop5` setting is the same with every
method's fine-tuning phases distilled from the unpruned model (`--distill 0.5`: half
cross-entropy, half the KL divergence from the unpruned model's outputs at temperature 4);
`distill-heldout-undo-drop5` adds `--back-off-until most-compressed` to bo: a run whose only
candidates within the target come from early rounds still undoes the later rounds while the model
it goes back to is more compressed than the kept one;
`distill-heldout-undo-drop3` is the same at round drop 3."""


def lqf(args: list[str], lock: str | None) -> None:
    cmd = [sys.executable, "-m", "lqf", *args]
    if lock:
        cmd = ["flock", lock, *cmd]
    print("$", " ".join(["python", "-m", "lqf", *args]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def finetune_dir(data: str, seed: int = 0) -> str:
    """The run directory of the fine-tuned model that every prune run of ``(data, seed)`` starts from."""
    return os.path.join(RUNS, data, "finetune" if seed == 0 else f"finetune-s{seed}")


def finetune(data: str, lock: str | None, seed: int = 0) -> str:
    out = finetune_dir(data, seed)
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        resume = os.path.isfile(os.path.join(out, "checkpoint.pt"))
        flags = ["--data", data, *FINETUNE, "--lr", FINETUNE_LR[data], "--epochs", FINETUNE_EPOCHS[data]]
        flags[flags.index("--seed") + 1] = str(seed)
        lqf(["fit", "--quiet", *(["--resume", out] if resume else ["--out", out, *flags])], lock)
        EXECUTED.append(out)
    return out


def prune(
    data: str,
    tag: str,
    source: str,
    flags: list[str],
    lock: str | None,
    setting: str,
    cached: bool = False,
    seed: int = 0,
) -> dict | None:
    out = os.path.join(RUNS, data, tag) if setting == "plain" else os.path.join(RUNS, data, setting, tag)
    if seed:
        out = os.path.join(os.path.dirname(out), f"s{seed}", tag)
    metrics = os.path.join(out, "metrics.json")
    if cached and not os.path.isfile(metrics):
        return None
    if not os.path.isfile(metrics):
        if os.path.isfile(os.path.join(out, "config.json")):
            lqf(["prune", "--resume", out, "--quiet"], lock)
        else:
            shutil.rmtree(out, ignore_errors=True)
            test = MAX_TEST if setting in SUBSET_TEST else []
            lqf(["prune", "--from", source, "--out", out, "--quiet", *test, *flags], lock)
        EXECUTED.append(out)
    with open(metrics) as handle:
        result = json.load(handle)
    result["run_dir"] = os.path.relpath(out, ROOT)
    result["flags"] = flags
    with open(os.path.join(out, "history.json")) as handle:
        result["rounds"] = json.load(handle)["rounds"]
    return result


def val_drop(run: dict) -> float:
    """A run's validation drop: on the images held out to judge its candidates, if it held some out."""
    return run["select_drop_points"] if run.get("n_select") else run["val_drop_points"]


def best_within(rows: list[dict], drop: float = 1.0) -> dict | None:
    """The most compressed run whose validation accuracy drop is at most ``drop`` points."""
    ok = [r for r in rows if val_drop(r) <= drop + 1e-9]
    return max(ok, key=lambda r: r["compression"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["fashion-mnist", "animal-mnist"])
    parser.add_argument(
        "--levels",
        nargs="*",
        type=float,
        default=list(LEVELS),
        help="baseline compression levels, relative to bo's",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[CHOSEN],
        choices=[CHOSEN, *SETTINGS],
        help=f"{CHOSEN}: the round drop chosen per data set on validation (seed 0), see ROUND_DROPS",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="seeds (each: its own split and fine-tuned model)"
    )
    parser.add_argument(
        "--one-shot",
        nargs="+",
        default=list(ONE_SHOT),
        choices=ONE_SHOT,
        help="the one-shot baselines to run at the new --levels (finished runs are reported anyway)",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=list(ONE_SHOT),
        choices=ONE_SHOT,
        help="the one-shot baselines to run at all (none: bo alone; finished runs are reported anyway)",
    )
    parser.add_argument("--cached", action="store_true", help="report finished runs only, run nothing")
    parser.add_argument("--no-random", action="store_true", help="skip the random-search baseline")
    parser.add_argument("--lock", help="flock this file around every step (shared machines)")
    parser.add_argument("--remark", help="a note for the report")
    args = parser.parse_args(argv)
    started = time.time()
    results = []
    for data in args.data:
        # the round drop is chosen once per data set, on seed 0
        settings = [with_back_off(choose_round_drop(data, args)) if s == CHOSEN else s for s in args.settings]
        for seed in args.seeds:
            if args.cached and not os.path.isfile(os.path.join(finetune_dir(data, seed), "metrics.json")):
                continue  # not on this machine: its committed entries are reported as they are
            source = finetune(data, args.lock, seed)
            with open(os.path.join(source, "metrics.json")) as handle:
                ft = json.load(handle)
            for setting in [s for s in settings if s is not None]:
                runs = prune_all(data, seed, setting, source, args)
                if runs is not None:
                    results.append(
                        {
                            "data": data,
                            "setting": setting,
                            "seed": seed,
                            "finetune": ft,
                            "finetune_run": os.path.relpath(source, ROOT),
                            "runs": runs,
                            "hardware": hardware(),
                        }
                    )
    write(results, args, time.time() - started)
    return 0


def selection(data: str, cached: bool, lock: str | None = None) -> tuple[list[dict], bool]:
    """bo on seed 0 at every round drop of ``ROUND_DROPS``.

    Returns the rows run so far and whether the selection is complete (with ``cached`` a missing
    run ends it incomplete)."""
    source = finetune_dir(data)
    rows: list[dict] = []
    for drop, setting in ROUND_DROPS.items():
        flags = ["--strategy", "bo", *SETTINGS[setting][1], *SETTINGS[setting][0]]
        result = prune(data, "bo", source, flags, lock, setting, cached=True)
        if result is None:  # not on this machine: the committed result, else run it
            result = committed().get((data, setting, 0), {}).get("runs", {}).get("bo")
        if result is None:
            result = committed_selection().get((data, setting))
        if result is None and not cached:
            result = prune(data, "bo", source, flags, lock, setting, cached)
        if result is None:
            return rows, False
        rows.append({"round_drop": float(drop), "setting": setting, "bo": result})
    return rows, True


def committed() -> dict[tuple, dict]:
    """The entries of the committed ``results/pruning.json`` by ``(data, setting, seed)``."""
    path = os.path.join(RESULTS, "pruning.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return {_key(e): e for e in json.load(handle)["results"]}


def committed_selection() -> dict[tuple[str, str], dict]:
    """The selection runs (bo, seed 0) recorded in the committed ``results/pruning.json``."""
    path = os.path.join(RESULTS, "pruning.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        rows = json.load(handle).get("selection", [])
    return {(row["data"], row["setting"]): row["bo"] for row in rows}


def slim(run: dict) -> dict:
    """What the selection table needs of a run (kept in pruning.json)."""
    keys = ("compression", "val_drop_points", "test_drop_points", "kept_step", "run_dir", "recorded_from")
    out = {k: run[k] for k in keys if k in run}
    out["rounds"] = [{k: r[k] for k in ("round", "compression", "drop")} for r in run.get("rounds", [])]
    return out


def with_back_off(setting: str | None) -> str | None:
    """The ``backoff-drop{D}`` setting of a chosen ``largeval-drop{D}`` one (itself if there is none)."""
    drop = next((d for d, s in ROUND_DROPS.items() if s == setting), None)
    return f"backoff-drop{drop}" if drop in BACK_OFF_DROPS else setting


def choose_round_drop(data: str, args: argparse.Namespace) -> str | None:
    """The setting of the round drop whose bo run (seed 0) keeps the most compression within 1 point
    of validation accuracy (``None`` while selection runs are missing with ``--cached``)."""
    if not args.cached:
        finetune(data, args.lock)
    return pick(*selection(data, args.cached, args.lock))


def pick(rows: list[dict], complete: bool) -> str | None:
    """The chosen setting among selection ``rows`` (``None`` if incomplete; the round drop of
    ``LATEST`` if no bo run is within 1 point)."""
    if not complete:
        return None
    best = best_within([r["bo"] for r in rows])
    return LATEST if best is None else next(r["setting"] for r in rows if r["bo"] is best)


def selection_lines(datasets: list[str]) -> tuple[dict[str, str], list[str], list[dict]]:
    """The chosen setting per data set (from finished selection runs), its table and its rows."""
    chosen: dict[str, str] = {}
    recorded: list[dict] = []
    lines = [
        "## The round drop, chosen per data set on validation (seed 0)",
        "",
        "bo (`largeval` flags) with the round drop `--round-drop D` of the rounds before the last, "
        "at every D of the grid; chosen: the most compression within 1 point of validation "
        "accuracy. Test shown for information only.",
        "",
        "| data | round drop | compression | val drop | test drop | per round (before fine-tuning) "
        "| chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for data in datasets:
        rows, complete = selection(data, cached=True)
        setting = pick(rows, complete)
        if setting is None:
            continue
        chosen[data] = setting
        recorded += [{"data": data, **row, "bo": slim(row["bo"])} for row in rows]
        for row in rows:
            bo = row["bo"]
            steps = ", ".join(f"{r['compression']:.2f}x ({r['drop']:+.1f})" for r in bo["rounds"])
            lines.append(
                f"| {data} | {row['round_drop']:g} | {bo['compression']:.2f}x | {bo['val_drop_points']:+.2f} "
                f"| {bo['test_drop_points']:+.2f} | {steps} | {'yes' if row['setting'] == setting else ''} |"
            )
    return chosen, (lines + [""] if chosen else []), recorded


def prune_all(data: str, seed: int, setting: str, source: str, args: argparse.Namespace) -> dict | None:
    """bo, then uniform and global at ``args.levels`` times bo's compression, then random."""
    common, searched = SETTINGS[setting]

    def run(tag: str, flags: list[str], cached: bool = args.cached) -> dict | None:
        return prune(data, tag, source, flags, args.lock, setting, cached, seed)

    runs = {"bo": run("bo", ["--strategy", "bo", *searched, *common])}
    if runs["bo"] is None:
        return None
    matched = runs["bo"]["compression"]
    for strategy in ONE_SHOT:
        for level in args.levels:
            rate = f"{level * matched:.3f}"
            flags = ["--strategy", strategy, "--target-compression", rate, *common]
            # runs for --baselines only, a level beyond LEVELS for --one-shot only; else reports finished runs
            only_report = strategy not in args.baselines or (
                strategy not in args.one_shot and level not in LEVELS
            )
            runs[f"{strategy}@{level:g}"] = run(
                f"{strategy}-{rate}x", flags, cached=args.cached or only_report
            )
    if not args.no_random:
        runs["random"] = run("random", ["--strategy", "random", *searched, *common])
    return {name: r for name, r in runs.items() if r is not None}


def write(results: list[dict], args: argparse.Namespace, seconds: float) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "pruning.json")
    if not EXECUTED and os.path.isfile(path):
        with open(path) as handle:
            kept = json.load(handle)
        seconds = kept.get("wall_seconds", seconds)
        args.remark = args.remark or kept.get("remark")
    if os.path.isfile(path):  # keep the (data, setting, seed) entries of earlier invocations
        with open(path) as handle:
            before = json.load(handle)
        earlier = [{"hardware": before["hardware"], **e} for e in before["results"]]  # where they ran
        mine = {_key(e) for e in results}
        results = [e for e in earlier if _key(e) not in mine] + results
        order = list(SETTINGS)
        results.sort(
            key=lambda e: (-order.index(e["setting"]), e["data"] != "fashion-mnist", e.get("seed", 0))
        )
    commands = []
    for setting, data in dict.fromkeys((e["setting"], e["data"]) for e in results):
        seeds = " ".join(
            str(e.get("seed", 0)) for e in results if (e["setting"], e["data"]) == (setting, data)
        )
        commands.append(f"python benchmarks/pruning.py --settings {setting} --data {data} --seeds {seeds}")
    chosen, table, recorded = selection_lines(list(dict.fromkeys(e["data"] for e in results)))
    # what the summary shows per data set: the chosen round drop with back-off where it was run
    shown = {
        data: with_back_off(setting)
        if any(e["data"] == data and e["setting"] == with_back_off(setting) for e in results)
        else setting
        for data, setting in chosen.items()
    }
    picked = [e for e in results if e["data"] in chosen and e["setting"] == with_back_off(chosen[e["data"]])]
    if picked:  # the default command: selection and the chosen settings
        data = " ".join(dict.fromkeys(e["data"] for e in picked))
        seeds = " ".join(str(x) for x in sorted({e.get("seed", 0) for e in picked}))
        commands.insert(0, f"python benchmarks/pruning.py --data {data} --seeds {seeds}")
    command = "; ".join(commands)
    payload = {
        "command": command,
        "hardware": hardware(),
        "wall_seconds": seconds,
        "remark": args.remark,
        "results": results,
        "selection": recorded,
    }
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
    lines = [
        "# Fine-Pruning benchmark",
        "",
        HEADER,
        f"Hardware: {machines(results)}. Run time of the reported runs (sum of the"
        " fine-tuning and prune runs, on a machine shared with other work):"
        f" {total_minutes(results):.0f} min.",
        f"Command: `{command}`.",
        "",
    ]
    lines += table
    for data, setting in shown.items():
        if setting == chosen[data] and with_back_off(setting) != setting:
            searched = [
                r
                for e in results
                if (e["data"], e["setting"]) == (data, setting)
                for n, r in e["runs"].items()
                if n in ("bo", "random")
            ]
            same = all(r.get("kept_step") is not None for r in searched)
            lines += [
                f"{data}: not run with `--back-off` (setting {with_back_off(setting)})"
                + (
                    f": every bo and random run of {setting} below kept a model within the target, and "
                    "back-off acts only when none is, so these runs are the ones back-off gives."
                    if same
                    else ", and some runs below kept no model within the target: back-off would change them."
                ),
                "",
            ]
        lines += summary([e for e in results if e["data"] == data], setting)
    for setting in EXTRA_SUMMARIES:
        lines += summary(results, setting)
    lines += ["# Every run", ""]
    for entry in results:
        ft = entry["finetune"]
        lines += [
            f"## {entry['data']}, setting {entry['setting']}, seed {entry.get('seed', 0)}",
            "",
            f"Flags of every prune run: `{' '.join(SETTINGS[entry['setting']][0])}`; "
            f"of bo and random also `{' '.join(SETTINGS[entry['setting']][1])}`.",
            "",
            f"Unpruned fine-tuned model ({entry['finetune_run']}): test "
            f"{100 * entry['runs']['bo']['reference_test_accuracy']:.2f}% on the "
            f"{entry['runs']['bo']['n_test']:,} test images used here "
            f"({100 * ft['test_accuracy']:.2f}% on all {ft['n_test']:,}), "
            f"val {100 * ft['val_accuracy']:.2f}%.",
            "",
            "| method | compression | params kept | val drop | test acc | test drop | packed MiB (dense) |"
            " prune s | GP overhead |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in entry["runs"].items():
            overhead = f"{100 * r['search_overhead_share']:.0f}%" if r.get("search_overhead_share") else ""
            lines.append(
                f"| {name} | {r['compression']:.2f}x | {r['params_kept']:,} / {r['params_prunable']:,} "
                f"| {val_drop(r):+.2f} | {100 * r['test_accuracy']:.2f} "
                f"| {r['test_drop_points']:+.2f} "
                f"| {r['packed_file_bytes'] / 2**20:.2f} ({r['dense_file_bytes'] / 2**20:.2f}) "
                f"| {r['seconds']:.0f} | {overhead} |"
            )
        for name in [n for n in ("bo", "random") if entry["runs"].get(n, {}).get("rounds")]:
            run = entry["runs"][name]
            steps = ", ".join(
                f"round {r['round']}: {r['compression']:.2f}x at {r['drop']:+.2f} points"
                for r in run["rounds"]
            )
            current = "--round-reference" in run["flags"]
            origin = "the model before the round" if current else "the unpruned model"
            lines.append(
                f"\n{name}: configuration chosen per round (validation, before fine-tuning; the drop from "
                f"{origin}): {steps}."
            )
            kept = [c for c in run.get("candidates") or [] if c["step"] == run.get("kept_step")]
            if run.get("candidates"):
                after = ", ".join(f"{c['compression']:.2f}x at {c['drop']:+.2f}" for c in run["candidates"])
                lines.append(
                    f"{name}: after each fine-tuning phase (validation drop from the unpruned model): "
                    + f"{after}; "
                    + (f"kept: {kept[0]['compression']:.2f}x." if kept else "none within the target.")
                )
        lines += ["", "Largest compression with validation drop <= 1 point (chosen on validation):", ""]
        for family in ("bo", "random", "uniform", "global"):
            rows = [r for n, r in entry["runs"].items() if n.split("@")[0] == family]
            best = best_within(rows)
            text = (
                f"{best['compression']:.2f}x (test drop {best['test_drop_points']:+.2f})"
                if best
                else "no run within 1 point"
                if rows
                else "not run"
            )
            lines.append(f"- {family}: {text}")
        lines.append("")
    lines += ["# Earlier settings", ""]
    for setting in (*dict.fromkeys(chosen[d] for d in shown if shown[d] != chosen[d]), LATEST, "threshold"):
        lines += summary([e for e in results if shown.get(e["data"]) != setting], setting)
    plot(
        [e for e in results if shown.get(e["data"]) == e["setting"]] or results,
        os.path.join(RESULTS, "pruning.png"),
    )
    lines += ["![test accuracy against compression](pruning.png)", ""]
    if args.remark:
        lines += [f"Remark: {args.remark}", ""]
    with open(os.path.join(RESULTS, "pruning.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


def summary(results: list[dict], setting: str = LATEST) -> list[str]:
    """One table per data set over the seeds of ``setting``: every method's compression and drops."""
    lines = []
    for data in dict.fromkeys(e["data"] for e in results if e["setting"] == setting):
        entries = [e for e in results if e["setting"] == setting and e["data"] == data]
        seeds = [e.get("seed", 0) for e in entries]
        lines += [
            f"## Summary: {data}, setting {setting}, seeds {', '.join(map(str, seeds))}",
            "",
            "Per seed `compression / val drop / test drop`; the last columns average the drops over the "
            "seeds (with their standard deviation), and count the seeds where the method is within "
            "1 point of validation accuracy.",
            "",
            "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean val drop | mean test drop "
            "| within 1 point (val) |",
            "|---|" + "---|" * len(seeds) + "---|---|---|",
        ]
        for name in entries[0]["runs"]:
            rows = [e["runs"].get(name) for e in entries]
            if any(r is None for r in rows):
                continue
            cells = [
                f"{r['compression']:.2f}x / {val_drop(r):+.2f} / {r['test_drop_points']:+.2f}" for r in rows
            ]
            val = [val_drop(r) for r in rows]
            test = [r["test_drop_points"] for r in rows]
            within = sum(v <= 1 + 1e-9 for v in val)
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {_mean_sd(val)} | {_mean_sd(test)} "
                f"| {within} of {len(rows)} |"
            )
        lines.append("")
    return lines


def _mean_sd(values: list[float]) -> str:
    import statistics

    mean = statistics.fmean(values)
    return f"{mean:+.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:+.2f}"


def _key(entry: dict) -> tuple:
    return entry["data"], entry["setting"], entry.get("seed", 0)


def machines(results: list[dict]) -> str:
    """The machines the entries ran on, each with its settings."""
    groups: dict[str, list[str]] = {}
    for e in results:
        hw = e.get("hardware") or hardware()
        name = f"{hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} on the CPU"
        groups.setdefault(name, [])
        if e["setting"] not in groups[name]:
            groups[name].append(e["setting"])
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{name} ({', '.join(settings)})" for name, settings in groups.items())


def total_minutes(results: list[dict]) -> float:
    """Minutes of the fine-tuning runs (once per data set) and of every reported prune run."""
    fts = {e["finetune_run"]: e["finetune"]["train_seconds"] for e in results}
    return (sum(fts.values()) + sum(r["seconds"] for e in results for r in e["runs"].values())) / 60


def plot(results: list[dict], path: str) -> None:
    """Test accuracy against compression per data set, one marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(e["data"] for e in results))
    cols = max(sum(e["data"] == d for e in results) for d in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(4.6 * cols, 3.6 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    styles = {"bo": ("*", "C3"), "random": ("D", "C1"), "uniform": ("o", "C0"), "global": ("s", "C2")}
    placed = []
    for i, data in enumerate(rows):
        placed += [(axes[i][j], e) for j, e in enumerate(e for e in results if e["data"] == data)]
    for ax, entry in placed:
        ax.set_visible(True)
        ref = entry["runs"]["bo"]["reference_test_accuracy"]
        ax.axhline(100 * ref, color="grey", ls=":", lw=1, label="unpruned")
        ax.axhline(100 * ref - 1, color="grey", ls="--", lw=0.8, label="unpruned - 1 point")
        for family, (marker, color) in styles.items():
            rows = sorted(
                (r for n, r in entry["runs"].items() if n.split("@")[0] == family),
                key=lambda r: r["compression"],
            )
            ax.plot(
                [r["compression"] for r in rows],
                [100 * r["test_accuracy"] for r in rows],
                marker=marker,
                color=color,
                ls="-" if len(rows) > 1 else "none",
                ms=9 if marker == "*" else 6,
                label=family,
            )
        top = max(r["compression"] for r in entry["runs"].values())
        ax.set_xlim(1.0, max(3.0, 1.2 * top))
        ax.set_xlabel("compression (prunable parameters / kept)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{entry['data']} ({entry['setting']}, seed {entry.get('seed', 0)})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
