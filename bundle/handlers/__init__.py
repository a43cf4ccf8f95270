"""Custom MONAI/ignite handlers."""

from bundle.handlers.resume import ResumeFromLatest, latest_checkpoint
from bundle.handlers.slice_metric import SliceMetric

__all__ = ["ResumeFromLatest", "SliceMetric", "latest_checkpoint"]
