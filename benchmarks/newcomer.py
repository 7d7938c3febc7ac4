# ruff: noqa: E501
"""A newcomer's path: a fresh clone, the README's two set-up commands, then every example it shows.

The committed ``HEAD`` of this repository is cloned into a new temporary directory (nothing of
this checkout's virtual environment, runs or caches comes along). In that clone, as a newcomer
would, in the README's order:

1. the two commands of its first block, as written (``bash scripts/setup.sh && .venv/bin/lqf demo``,
   then the same set-up and the test suite), each timed;
2. every other command of its ``bash`` blocks, as written, with ``.venv/bin`` first on ``PATH``
   (where ``lqf`` is after set-up), one after the other in the clone's directory;
3. every ``python`` block, with the clone's ``.venv/bin/python``.

Each gets its exit status, wall time and last line of output. Results:
``benchmarks/results/newcomer.{md,json}``.

Usage::

    python benchmarks/newcomer.py [--keep DIR]   # DIR: clone there and keep it
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from common import hardware  # noqa: E402


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced ``bash`` or ``python`` block, in order."""
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def bash_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = body.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.split(" # ")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def run(command: list[str] | str, cwd: str, env: dict, shell: bool = False) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, shell=shell, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    # a progress bar redraws its line with carriage returns: keep what it showed last
    lines = [line.split("\r")[-1] for line in (proc.stdout + proc.stderr).splitlines()]
    lines = [line for line in lines if line.strip()]
    out = {"exit": proc.returncode, "seconds": seconds, "last_line": lines[-1][:200] if lines else ""}
    if proc.returncode != 0:  # what went wrong, for the record
        out["failures"] = [line[:300] for line in lines if line.startswith(("FAILED", "ERROR", "E  "))][:40]
        out["tail"] = [line[:300] for line in lines[-60:]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="clone into this new directory and keep it")
    args = parser.parse_args()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    clone = args.keep or os.path.join(tempfile.mkdtemp(prefix="lqf-newcomer-"), "lqf")
    if os.path.exists(clone):
        raise SystemExit(f"{clone} exists; give a new directory")
    subprocess.run(["git", "clone", "--quiet", ROOT, clone], check=True)
    with open(os.path.join(clone, "README.md")) as handle:
        readme = handle.read()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.path.join(clone, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    env["LQF_PROGRESS"] = "line"
    steps = []
    found = blocks(readme)
    for k, (lang, body) in enumerate(found):
        if lang == "bash":
            for command in bash_commands(body):
                result = {"block": k, "command": command, **run(command, clone, env, shell=True)}
                print(result, flush=True)
                steps.append(result)
        else:
            result = {"block": k, "command": "python: " + body.strip().splitlines()[-1][:80]}
            result.update(run([os.path.join(clone, ".venv", "bin", "python"), "-c", body], clone, env))
            print(result, flush=True)
            steps.append(result)
    results = {
        "hardware": hardware(),
        "commit": head,
        "command": "python benchmarks/newcomer.py",
        "steps": steps,
    }
    with open(os.path.join(RESULTS, "newcomer.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    lines = [
        "# A newcomer's path on a fresh clone",
        "",
        f"Command: `{results['command']}` (commit `{head}`, cloned into a new directory). Hardware: {results['hardware']['cpu']}, "
        f"{results['hardware']['cores']} cores. Every command of the README's shell blocks as written, in order, in the clone "
        "(`.venv/bin` first on `PATH` once set up), then its Python block. The first two are the set-up commands.",
        "",
        "| # | command | exit | seconds | last line of output |",
        "|---|---|---|---|---|",
    ]
    for i, s in enumerate(steps, start=1):
        last = s["last_line"].replace("|", "\\|")
        lines.append(f"| {i} | `{s['command']}` | {s['exit']} | {s['seconds']:.0f} | {last} |")
    ok = sum(s["exit"] == 0 for s in steps)
    lines += ["", f"{ok} of {len(steps)} commands exited 0."]
    for i, s in enumerate(steps, start=1):
        for failure in s.get("failures", []):
            lines.append(f"- command {i}: `{failure}`")
    lines.append("")
    with open(os.path.join(RESULTS, "newcomer.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok == len(steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
