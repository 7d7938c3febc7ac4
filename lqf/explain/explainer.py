"""Exact explanations of a trained linear model: :class:`Explainer`.

A run of ``--method lqf`` (squared loss, any solver) or ``--method linear-probe`` (ridge, a
learned or a fixed head) ends in a model linear in its trained parameters, fitted by ridge
regression (:mod:`lqf.explain.ridge`). The explainer rebuilds that ridge problem from the
model and its training images, then answers, without retraining:

* ``loo_predictions()``: each training image predicted by the model trained without it;
* ``mislabel_scores()``: how far that prediction prefers another class over the given label;
* ``influence(images)``: how each training image moves each class score of new images
  (``f(x) - f_{-i}(x)``), and ``representer(images)``: each training image's share of the
  score change from ``w0``;
* ``forget(indices)``: the model that retraining without those images gives.

For an LQF run solved by ``sgd`` (or an iterative solve that stopped short) the run's weights
are an approximation of the ridge optimum these answers describe; ``consistency`` says how far
apart the two are.

Example::

    from lqf.explain import Explainer
    ex = Explainer.from_run("runs/lqf")
    scores = ex.mislabel_scores()                 # (N,), the higher the more suspect
    influence = ex.influence(test_images)         # (T, N, C)
    model = ex.forget([3, 17])                    # as if images 3 and 17 were never seen
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lqf.errors import LqfError
from lqf.explain.ridge import DualRidge, PrimalRidge, ProbeRidge
from lqf.explain.runs import linear_kind
from lqf.heads.fixed import FixedClassifier
from lqf.linearization.factors import JacobianFactors
from lqf.solvers.ridge import mean_eigenvalue
from lqf.training.evaluate import apply


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in ts])


class Explainer:
    """The ridge problem behind a linear model, and the exact answers it gives.

    Args:
        model: the trained model (an LQF run's ``LQFModel`` or a probe's ``TransferModel``).
        train: its training images (the same split it was fitted on).
        method, options: the run's method name and options.
        metrics: the run's metrics (the chosen penalty: ``ridge_relative``, ``ridge_scale``).
        batch_size: images per forward pass.
    """

    def __init__(self, model: nn.Module, train, *, method: str, options: Any, metrics: dict, batch_size=256):
        self.kind = linear_kind(method, options)
        self.model = model.eval()
        self.train = train
        self.batch_size = batch_size
        self.labels = train.labels
        self.n = len(train)
        c = model.num_classes
        self.num_classes = c
        device = next(model.parameters()).device
        self.device = device
        onehot = nn.functional.one_hot(train.labels, c).double()
        rel = metrics.get("ridge_relative")
        if self.kind == "lqf":
            self.targets = float(options.target_scale) * onehot
            if metrics.get("lam") is not None and rel is None:  # the sgd route: lam as it was used
                mu = self.n * float(metrics["lam"])
            else:
                mu = self.n * float(rel) * float(metrics["ridge_scale"])
            z = apply(model.features_in, train, batch_size=batch_size, device=device)
            factors = JacobianFactors(model.linear, z)
            self.view = DualRidge(factors, self.targets, mu)
            have = _flat(d.detach() for d in model.linear.delta)
            exact = _flat(self.view.delta())
        else:
            self.targets = onehot
            phi = apply(model.embed, train, batch_size=batch_size, device=device).double()
            if isinstance(model.head, FixedClassifier):
                self.kind = "fixed-probe"
                with torch.no_grad():
                    cos = model.head.project(phi.to(model.head.scale)).double().cpu()
                energy = float((cos - cos.mean(0)).pow(2).sum())
                penalty = torch.zeros(c + 1, c + 1, dtype=torch.float64)
                penalty[0, 0] = float(rel) * energy
                self.view = PrimalRidge(self._fixed_design(cos), onehot, penalty)
                have = torch.cat(
                    [model.head.scale.detach().double().reshape(1), model.head.bias.detach().double()]
                )
                exact = self.view.theta
            else:
                self.view = ProbeRidge(phi, onehot, float(rel) * mean_eigenvalue(phi))
                have = torch.cat(
                    [model.head.weight.detach().double().T, model.head.bias.detach().double()[None]]
                )
                have = have.reshape(-1)
                exact = self.view.weights.reshape(-1)
        #: relative difference between the model's weights and the exact ridge optimum
        self.consistency = float((have.cpu() - exact.cpu()).norm() / max(float(exact.norm()), 1e-30))

    @staticmethod
    def _fixed_design(cos: torch.Tensor) -> torch.Tensor:
        n, c = cos.shape
        return torch.cat([cos.unsqueeze(2), torch.eye(c, dtype=torch.float64).expand(n, c, c)], 2)

    @classmethod
    def from_run(cls, path: str) -> Explainer:
        """The explainer of a finished run directory (its training split rebuilt from its settings)."""
        from lqf.explain.runs import load_linear_run

        model, train, config, options, metrics = load_linear_run(path)
        ex = cls(model, train, method=config.method, options=options, metrics=metrics)
        ex.config = config
        return ex

    # ------------------------------------------------------------------------------ answers
    def fitted(self) -> torch.Tensor:
        """The ridge model's outputs on its training images ``(N, C)``."""
        return self.view.fitted().cpu()

    def loo_predictions(self) -> torch.Tensor:
        """``f_{-i}(x_i)`` ``(N, C)``: every training image, predicted without itself."""
        return self.view.loo_predictions().cpu()

    def self_influence(self) -> torch.Tensor:
        """``f(x_i) - f_{-i}(x_i)`` on the given label's score ``(N,)``: how much the image props up
        its own label (large: memorised, often mislabelled or atypical)."""
        gap = self.fitted() - self.loo_predictions()
        return gap[torch.arange(self.n), self.labels]

    def mislabel_scores(self) -> torch.Tensor:
        """``max_{c != y_i} f_{-i}(x_i)_c - f_{-i}(x_i)_{y_i}`` ``(N,)``: positive when the model
        trained without the image prefers another class to its label."""
        loo = self.loo_predictions()
        own = loo[torch.arange(self.n), self.labels]
        others = loo.clone()
        others[torch.arange(self.n), self.labels] = -float("inf")
        return others.max(1).values - own

    def _test_view(self, images: torch.Tensor):
        x = images.to(self.device)
        if self.kind == "lqf":
            with torch.no_grad():
                z = self.model.features_in(x)
            return JacobianFactors(self.model.linear, z)
        with torch.no_grad():
            phi = self.model.embed(x).double()
        if self.kind == "fixed-probe":
            with torch.no_grad():
                cos = self.model.head.project(phi.to(self.model.head.scale)).double().cpu()
            return self._fixed_design(cos)
        return phi.cpu()

    def influence(self, images: torch.Tensor) -> torch.Tensor:
        """``f(x) - f_{-i}(x)`` ``(T, N, C)`` for images ``(T, 3, S, S)`` in ``[0, 1]``: positive where
        removing training image ``i`` would lower class ``c``'s score of ``x`` (it helps ``c``)."""
        return self.view.influence(self._test_view(images)).cpu()

    def representer(self, images: torch.Tensor) -> torch.Tensor:
        """Each training image's share of the scores ``(T, N, C)``: of ``f(x) - f(x; w0)`` for LQF
        (``k(x, x_i) alpha_i``), of ``f(x)`` for a probe."""
        return self.view.representer(self._test_view(images)).cpu()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The model's scores ``(T, C)``."""
        with torch.no_grad():
            return self.model(images.to(self.device)).double().cpu()

    def predict_with_variance(
        self, images: torch.Tensor, batch: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and their exact posterior variances per unit noise variance, both ``(T, C)``
        (:meth:`~lqf.explain.ridge.DualRidge.posterior_variance`; the noise variance and a
        temperature are chosen on validation by :func:`lqf.explain.uncertainty.fit_calibration`)."""
        if self.kind == "fixed-probe":
            raise LqfError(
                "predictive variance is built for LQF and the learned-head probe, not a fixed head"
            )
        means, variances = [], []
        for lo in range(0, len(images), batch):
            part = images[lo : lo + batch]
            means.append(self.predict(part))
            variances.append(self.view.posterior_variance(self._test_view(part)).cpu())
        return torch.cat(means), torch.cat(variances)

    # --------------------------------------------------------------------------- forgetting
    def check_forget(self, indices) -> list[int]:
        """``indices`` as a sorted list, refused with one line if they would empty a class or the set."""
        idx = sorted(int(i) for i in indices)
        if not idx:
            raise LqfError("no index to forget; give at least one training image")
        if len(set(idx)) != len(idx):
            dup = sorted({i for i in idx if idx.count(i) > 1})
            raise LqfError(f"index {dup[0]} is given twice; list every training image once")
        bad = [i for i in idx if not 0 <= i < self.n]
        if bad:
            raise LqfError(
                f"index {bad[0]} is out of range: the run has {self.n} training images, 0..{self.n - 1}"
            )
        if len(idx) == self.n:
            raise LqfError("forgetting every training image leaves nothing to fit; train a new model instead")
        keep = torch.ones(self.n, dtype=torch.bool)
        keep[idx] = False
        classes = self.train.classes
        for c in range(self.num_classes):
            if (self.labels == c).any() and not (keep & (self.labels == c)).any():
                raise LqfError(
                    f"forgetting these images removes every training image of class {classes[c]!r}; "
                    "keep at least one, or train a model without that class"
                )
        return idx

    def forget(self, indices) -> nn.Module:
        """A copy of the model as retraining without the training images ``indices`` gives it
        (same settings, same penalty; see :mod:`lqf.explain.ridge`)."""
        idx = self.check_forget(indices)
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            if self.kind == "lqf":
                delta = self.view.delta(self.view.forget(idx))
                for d, v in zip(model.linear.delta, delta, strict=True):
                    d.copy_(v.to(d))
            elif self.kind == "fixed-probe":
                theta = self.view.forget(idx)
                model.head.scale.fill_(float(theta[0]))
                model.head.bias.copy_(theta[1:].to(model.head.bias))
            else:
                weights = self.view.forget(idx)
                model.head.weight.copy_(weights[:-1].T.to(model.head.weight))
                model.head.bias.copy_(weights[-1].to(model.head.bias))
        return model
