"""Losses of the method and the baselines."""

from bundle.losses.multitask import IGNORE_INDEX, AdaptationLoss, MultiTaskLoss, masked_density_l2

__all__ = ["IGNORE_INDEX", "AdaptationLoss", "MultiTaskLoss", "masked_density_l2"]
