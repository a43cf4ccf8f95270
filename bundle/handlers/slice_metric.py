"""Ignite metric scoring whole validation slices with the project's metrics (Dice, IoU, AJI, PQ, ...)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.metrics import Metric

from bundle.inference.postprocess import instances_from_prediction, split_output
from bundle.metrics import aggregated_jaccard_index, binary_scores, panoptic_quality

INSTANCE_METRICS = {"aji": aggregated_jaccard_index, "pq": panoptic_quality}
PIXEL_METRICS = ("dice", "iou", "f1", "mcc", "map")


class SliceMetric(Metric):
    """Mean over validation slices of one metric; `output_transform` gives (network output, instance labels)."""

    def __init__(
        self,
        metric: str = "dice",
        postprocessing: Callable[..., np.ndarray] = instances_from_prediction,
        threshold: float = 0.5,
        output_transform: Callable = lambda output: (output["pred"], output["label"]),
    ) -> None:
        if metric not in PIXEL_METRICS and metric not in INSTANCE_METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {PIXEL_METRICS + tuple(INSTANCE_METRICS)}")
        self.metric = metric
        self.postprocessing = postprocessing
        self.threshold = threshold
        self._scores: list[float] = []
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        """Forget the slices of the previous validation run."""
        self._scores = []

    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Score every slice of a batch: output (B, 3, H, W), label (B, 1, H, W) instance ids."""
        pred, label = output
        probability, density = (t[:, 0].detach().cpu().numpy() for t in split_output(pred))
        instances_gt = label[:, 0].detach().cpu().numpy()
        for prob, dens, gt in zip(probability, density, instances_gt):
            if self.metric in INSTANCE_METRICS:
                self._scores.append(INSTANCE_METRICS[self.metric](self.postprocessing(prob, dens), gt))
            else:
                self._scores.append(binary_scores(prob >= self.threshold, gt > 0, prob)[self.metric])

    def compute(self) -> float:
        """Mean of the slice scores (NaN slices, e.g. AP without foreground, are left out)."""
        return float(np.nanmean(self._scores)) if self._scores else float("nan")
