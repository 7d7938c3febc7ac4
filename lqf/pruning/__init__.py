"""Fine-Pruning: per-layer magnitude pruning chosen by Bayesian optimisation, jointly
with fine-tuning (Tung, Muralidharan and Mori, BMVC 2017); masks that hold through
training; a compressed checkpoint format."""

from lqf.pruning.export import load_packed, save_packed
from lqf.pruning.layers import PrunableLayer, find_prunable, groups_of
from lqf.pruning.masks import Compression, MaskSet, global_masks, layer_masks, magnitude_mask
from lqf.pruning.objective import Objective
from lqf.pruning.options import PruneOptions

__all__ = [
    "Compression",
    "MaskSet",
    "Objective",
    "PrunableLayer",
    "PruneOptions",
    "find_prunable",
    "global_masks",
    "groups_of",
    "layer_masks",
    "load_packed",
    "magnitude_mask",
    "save_packed",
]
