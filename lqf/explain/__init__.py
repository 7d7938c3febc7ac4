"""Exact answers of linear models: leave-one-out, influence, mislabel detection, forgetting.

:class:`Explainer` (:mod:`lqf.explain.explainer`) on a trained linear model or a run
directory; the closed forms in :mod:`lqf.explain.ridge`; ``lqf explain`` and ``lqf forget``
write their reports (:mod:`lqf.explain.report`) and forgotten runs (:mod:`lqf.explain.runs`).
"""

from lqf.explain.explainer import Explainer

__all__ = ["Explainer"]
