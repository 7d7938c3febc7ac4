"""lqf: predictable fine-tuning of pretrained networks.

The package is organised like the method: ``models`` (pretrained backbones
with a replaceable head), ``data`` (offline data sets, few-shot splits),
``methods`` (fine-tuning, linear probe, ...), ``training`` (the loop,
checkpoints), ``runs`` (run directories), ``reports`` (plots, tables) and
``cli``. Heavy modules are imported lazily so ``lqf --help`` is instant.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
