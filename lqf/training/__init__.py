"""Training machinery shared by methods: the epoch loop, evaluation, progress."""

from lqf.training.evaluate import accuracy, evaluate, predict_logits
from lqf.training.loop import train_epochs

__all__ = ["accuracy", "evaluate", "predict_logits", "train_epochs"]
