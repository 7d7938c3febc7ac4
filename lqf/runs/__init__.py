"""Run directories."""

from lqf.runs.rundir import RunDirectory

__all__ = ["RunDirectory"]
