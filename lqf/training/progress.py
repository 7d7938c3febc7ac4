"""Progress that a person reads: a bar on a terminal, one line per stage elsewhere.

On a terminal (standard error is a TTY) each stage is a tqdm bar that disappears when it
ends. Written to a file or a CI log, a bar would become thousands of carriage-return
fragments, so a stage prints one line when it ends instead: its name, how much it did, its
time and its last note (``features: 1000/1000 in 2.1 s``). ``quiet`` prints nothing.
Set ``LQF_PROGRESS=bar`` or ``line`` to force either.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _bars() -> bool:
    forced = os.environ.get("LQF_PROGRESS", "")
    if forced in ("bar", "line"):
        return forced == "bar"
    return sys.stderr.isatty()


class Stage:
    """One stage of work with a known or unknown size.

    Args:
        desc: the stage's name.
        total: its size (``None``: unknown).
        quiet: print nothing.
        unit: what one step is (shown in the bar).
    """

    def __init__(self, desc: str, total: float | None = None, *, quiet: bool = False, unit: str = "it"):
        self.desc, self.total, self.quiet = desc, total, quiet
        self.done = 0.0
        self.text = ""
        self.start = time.perf_counter()
        self.bar = None
        if not quiet and _bars():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, unit=unit
            )

    def update(self, n: float = 1) -> None:
        """``n`` more steps done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def set(self, done: float) -> None:
        """``done`` steps done in all."""
        self.update(done - self.done)

    def note(self, text: str) -> None:
        """A short status (a residual, a loss) shown beside the bar and in the closing line."""
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """End the stage (on a file: print its line)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.quiet = True
            return
        seconds = time.perf_counter() - self.start
        size = ""
        if self.total is not None:
            size = f" {self.done:g}/{self.total:g}"
        elif self.done:
            size = f" {self.done:g}"
        note = f" ({self.text})" if self.text else ""
        print(f"{self.desc}:{size} in {seconds:.1f} s{note}", file=sys.stderr, flush=True)
        self.quiet = True

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()


def say(text: str, *, quiet: bool = False) -> None:
    """One line of progress on standard error (above a running bar, if there is one)."""
    if quiet:
        return
    if _bars():
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool = False
) -> Iterator[T]:
    """Iterate over ``items`` as one :class:`Stage` (nothing shown if ``quiet``)."""
    if quiet:
        yield from items
        return
    stage = Stage(desc, total)
    try:
        for item in items:
            yield item
            stage.update()
    finally:  # also when the caller stops early
        stage.close()
