"""Custom MONAI/ignite handlers."""

from bundle.handlers.call_engine import CallEngine
from bundle.handlers.prototype_bank import PrototypeBank
from bundle.handlers.pseudo_label_rounds import PseudoLabelRounds
from bundle.handlers.resume import ResumeFromLatest, latest_checkpoint
from bundle.handlers.run_events import RunEvents
from bundle.handlers.slice_metric import SliceMetric

__all__ = [
    "CallEngine", "PrototypeBank", "PseudoLabelRounds", "ResumeFromLatest", "RunEvents", "SliceMetric",
    "latest_checkpoint",
]  # fmt: skip
