"""Sliding-window prediction and post-processing."""

from bundle.inference.postprocess import instances_from_prediction, split_output
from bundle.inference.predict import VolumePredictor, predict_slice

__all__ = ["VolumePredictor", "instances_from_prediction", "predict_slice", "split_output"]
