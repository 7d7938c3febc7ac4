"""Knowledge distillation: a student trained towards a teacher's softened outputs.

Hinton, Vinyals and Dean (2015). With student logits ``s``, teacher logits
``t`` (both ``(B, C)``), labels ``y``, weight ``alpha`` and temperature ``T``,

    L = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)),

both terms averaged over the batch. The ``T^2`` keeps the gradient of the second
term on the scale of the first as ``T`` grows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``L`` above for a batch: ``logits`` and ``teacher_logits`` ``(B, C)``, ``labels`` ``(B,)``."""
    hard = nn.functional.cross_entropy(logits, labels)
    if alpha == 0:
        return hard
    log_student = nn.functional.log_softmax(logits / temperature, dim=1)
    log_teacher = nn.functional.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = nn.functional.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * temperature**2 * soft


def distilling(
    teacher: nn.Module, alpha: float, temperature: float
) -> tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor, torch.Tensor], tuple]]:
    """The ``loss_fn`` and ``target_fn`` of :func:`lqf.training.train_epochs` that distil ``teacher``
    (kept in eval mode, no gradients) into the trained model."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def target(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return y, teacher(x)

    def loss(logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        y, t = target
        return distillation_loss(logits, y, t, alpha=alpha, temperature=temperature)

    return loss, target
