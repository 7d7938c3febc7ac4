"""Ridge regression on fixed features in closed form, for the whole penalty path at once.

With features ``Phi`` ``(N, D)``, targets ``Y`` ``(N, C)`` and penalty
``lambda ||W||^2`` on column-centred features ``Phi_c``::

    W(lambda) = (Phi_c^T Phi_c + lambda I)^{-1} Phi_c^T Y_c = V diag(s / (s^2 + lambda)) U^T Y_c,
    b(lambda) = mean(Y) - mean(Phi) W(lambda),

from one SVD ``Phi_c = U diag(s) V^T``: every ``lambda`` of a grid costs one
decomposition. :func:`ridge_direct` is the dense normal-equations twin that the
tests hold it to. The linear probe and LQF's probe head both use it.
"""

from __future__ import annotations

import torch

#: candidate penalties: relative to the mean eigenvalue of Phi_c^T Phi_c (ridge), or
#: absolute on standardised features with the mean loss (logistic)
GRID = tuple(10.0**k for k in range(-6, 5))
NO_VALIDATION_DEFAULT = 1e-2


def mean_eigenvalue(features: torch.Tensor) -> float:
    """Mean non-zero eigenvalue of ``Phi_c^T Phi_c`` for centred features
    ``Phi_c`` ``(N, D)``: ``trace / min(N - 1, D)``."""
    centred = features.double() - features.double().mean(0)
    rank = max(1, min(features.shape[0] - 1, features.shape[1]))
    return float(centred.pow(2).sum()) / rank


def ridge_path(
    features: torch.Tensor, targets: torch.Tensor, lambdas: list[float]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ridge solutions ``(W (D, C), b (C,))`` for each ``lambda`` (absolute).

    Args:
        features: ``Phi``, ``(N, D)``.
        targets: ``Y``, ``(N, C)``.
        lambdas: penalties on ``||W||^2``.
    """
    phi = features.double()
    y = targets.double()
    mu, ybar = phi.mean(0), y.mean(0)
    u, s, vh = torch.linalg.svd(phi - mu, full_matrices=False)
    uty = u.T @ (y - ybar)
    out = []
    for lam in lambdas:
        w = vh.T @ ((s / (s**2 + lam)).unsqueeze(1) * uty)
        out.append((w, ybar - mu @ w))
    return out


def ridge_direct(
    features: torch.Tensor, targets: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ridge solution by a dense solve of the normal equations (reference)."""
    phi = features.double()
    y = targets.double()
    mu, ybar = phi.mean(0), y.mean(0)
    pc = phi - mu
    w = torch.linalg.solve(pc.T @ pc + lam * torch.eye(pc.shape[1], dtype=pc.dtype), pc.T @ (y - ybar))
    return w, ybar - mu @ w
