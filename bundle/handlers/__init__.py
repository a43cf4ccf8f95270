"""Custom MONAI/ignite handlers."""

from bundle.handlers.pseudo_label_rounds import PseudoLabelRounds
from bundle.handlers.resume import ResumeFromLatest, latest_checkpoint
from bundle.handlers.slice_metric import SliceMetric

__all__ = ["PseudoLabelRounds", "ResumeFromLatest", "SliceMetric", "latest_checkpoint"]
