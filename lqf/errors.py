"""User-facing errors.

Every problem a user can fix (a wrong name, a missing file, an impossible
option) is raised as :class:`LqfError`. The CLI prints its message as one line,
prefixed with ``lqf: error:``, and exits with status 2, instead of a traceback.
Messages follow one template: what was wrong (echoing the value), what is
allowed, and what to do next.
"""

from __future__ import annotations


class LqfError(Exception):
    """A problem with the user's input, reported as one clear line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class NonFiniteLossError(LqfError):
    """Training produced a NaN or infinite loss."""
