"""Training methods, each registered under its ``--method`` name."""

from lqf.methods.base import FitContext, Method, get_method, methods, register_method

__all__ = ["FitContext", "Method", "get_method", "methods", "register_method"]
