"""Sliding-window prediction and post-processing."""

from bundle.inference.feature_inferer import FeatureInferer
from bundle.inference.instances3d import instance_table, instances_3d, write_instance_table, write_instances_3d
from bundle.inference.postprocess import instances_from_prediction, label_instances, split_output
from bundle.inference.predict import VolumePredictor, predict_slice
from bundle.inference.summary import summarize_prediction

__all__ = [
    "FeatureInferer",
    "VolumePredictor",
    "instance_table",
    "instances_3d",
    "instances_from_prediction",
    "label_instances",
    "predict_slice",
    "split_output",
    "summarize_prediction",
    "write_instance_table",
    "write_instances_3d",
]
