"""Losses of the method and the baselines."""

from bundle.losses.cafa import CAFALoss
from bundle.losses.consistency import TwoViewAdaptationLoss
from bundle.losses.contrastive import CONTRAST_MODES, ClassFocusedContrastLoss, ContrastiveAdaptationLoss
from bundle.losses.multitask import (
    IGNORE_INDEX,
    AdaptationLoss,
    MultiTaskLoss,
    check_weight,
    loss_terms_transform,
    masked_density_l2,
    source_weight_schedule,
)
from bundle.losses.r4mito import R4MITOLoss

__all__ = [
    "CONTRAST_MODES",
    "IGNORE_INDEX",
    "AdaptationLoss",
    "CAFALoss",
    "ClassFocusedContrastLoss",
    "ContrastiveAdaptationLoss",
    "MultiTaskLoss",
    "R4MITOLoss",
    "TwoViewAdaptationLoss",
    "check_weight",
    "loss_terms_transform",
    "masked_density_l2",
    "source_weight_schedule",
]
