"""Curvature of the LQF problem: K-FAC factors and the exact dense twin for tests."""

from lqf.curvature.kfac import KFAC

__all__ = ["KFAC"]
