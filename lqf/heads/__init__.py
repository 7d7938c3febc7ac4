"""Fixed classifier heads (Hoffer, Hubara and Soudry, ICLR 2018).

``FixedClassifier(d, C, kind)`` replaces ``nn.Linear(d, C)``: features are
L2-normalised, multiplied by a fixed matrix (truncated Hadamard or random
orthogonal) and by one learned scale, plus a learned bias. The Hadamard head
multiplies by a fast Walsh-Hadamard transform where that is faster.
:func:`make_head` builds a head from its ``--head`` name.
"""

from lqf.heads.factory import HEAD_CHOICES, head_spec, make_head, set_head
from lqf.heads.fixed import FixedClassifier, compact_state_dict, default_scale

__all__ = [
    "HEAD_CHOICES",
    "FixedClassifier",
    "compact_state_dict",
    "default_scale",
    "head_spec",
    "make_head",
    "set_head",
]
