"""The README's commands stay runnable as written: every ``lqf`` line of its shell blocks parses with
the real command line, every file it links exists, and it stays a front page (at most 200 lines)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lqf.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands(text: str) -> list[list[str]]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words and words[0].endswith("lqf"):
                    out.append(words[1:])
    return out


def test_the_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 200


@pytest.mark.parametrize("argv", _commands(README), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # a usage error: the README names a flag that does not exist
        pytest.fail(f"lqf {' '.join(argv)}: exit {done.code}")
    assert getattr(args, "func", None) is not None


def test_every_linked_file_exists() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target
