"""Training methods, each registered under its ``--method`` name.

Importing this package registers the built-in methods (their modules register
themselves with :func:`register_method`); a method of your own registers the
same way when its module is imported.
"""

from lqf.methods import finetune, linear_probe, lqf  # noqa: F401  (register the built-in methods)
from lqf.methods.base import Method, get_method, methods, register_method
from lqf.training.context import FitContext

__all__ = ["FitContext", "Method", "get_method", "methods", "register_method"]
