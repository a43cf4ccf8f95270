"""Segmentation cross-entropy + λ1 · L2 on the centre-density head, with ignored pixels."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.errors import input_error
from bundle.networks.multitask_unet import DENSITY_CHANNEL, SEG_CHANNELS

IGNORE_INDEX = 255  # label value of pixels that carry no segmentation supervision


def masked_density_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Mean squared error between scaled densities over the pixels where `mask` is true (all when None)."""
    error = ((pred - target) * scale) ** 2
    if mask is None:
        return error.mean()
    mask = mask.to(error.dtype)
    return (error * mask).sum() / mask.sum().clamp_min(1.0)


def check_weight(name: str, value: object, what: str) -> None:
    """An InputError naming `name` unless `value` is a number >= 0 (a config value read only once training runs)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise input_error(name, f"{value!r} is not a number >= 0 ({what})", f"pass --{name} with a number from 0")


def source_weight_schedule(end: float, end_iteration: int) -> dict[str, float]:
    """`vc_kwargs` of MONAI's linear ParamSchedulerHandler for the source loss's weight: 1 at the first iteration,
    `end` at iteration `end_iteration`, then held (adapt_wda.yaml). Both values are checked here, before training."""
    check_weight("source_weight_end", end, "the source weight's end value")
    check_weight("source_weight_end_iteration", end_iteration, "the iteration at which the source weight reaches it")
    return {"initial_value": 1.0, "step_constant": 0, "step_max_value": end_iteration, "max_value": end}


def weighted_cross_entropy(logits: torch.Tensor, label: torch.Tensor, class_weights: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy of (B, C, H, W) `logits` against (B, H, W) `label`, each labelled pixel weighted by its sample's
    (B, C) `class_weights` of its class: sum(w · CE) / sum(w) over the labelled pixels (torch's `weight` per sample)."""
    labelled = label != ignore_index
    classes = torch.where(labelled, label, torch.zeros_like(label))
    weights = torch.gather(class_weights.to(logits.dtype), 1, classes.flatten(1)).view_as(label) * labelled
    losses = F.cross_entropy(logits, classes, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp_min(torch.finfo(logits.dtype).tiny)


class MultiTaskLoss(nn.Module):
    """L = CE(segmentation logits, label) + λ1 · L2(density · scale, target density · scale). The last call's
    unweighted terms are kept in `last` ({"ce", "density"}, detached tensors: read as numbers only when logged, by
    `loss_terms_transform`, so that a GPU step does not wait for them). A target with "class_weights" ((B, 2):
    background, foreground weight of each sample; `bundle.pseudo_labels.rounds.class_prior_weights`) gets the
    weighted mean of the pixels' cross-entropies."""

    def __init__(self, lambda_density: float = 1.0, density_scale: float = 1000.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.lambda_density = lambda_density
        self.density_scale = density_scale
        self.ignore_index = ignore_index
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`pred` is the network output (B, 3, H, W); `target` has "label", "density" and optionally "density_mask"."""
        logits = pred[:, list(SEG_CHANNELS)]
        label = target["label"][:, 0].long()
        if torch.all(label == self.ignore_index):
            seg = logits.sum() * 0.0  # nothing labelled in this batch: keep the graph, add no gradient
        elif "class_weights" in target:
            seg = weighted_cross_entropy(logits, label, target["class_weights"], self.ignore_index)
        else:
            seg = F.cross_entropy(logits, label, ignore_index=self.ignore_index)
        density = masked_density_l2(
            pred[:, DENSITY_CHANNEL : DENSITY_CHANNEL + 1], target["density"], target.get("density_mask"), self.density_scale
        )
        self.last = {"ce": seg.detach(), "density": density.detach()}
        return seg + self.lambda_density * density


class AdaptationLoss(nn.Module):
    """`source_weight` · `source_loss`(source part) + `loss`(target part) of a paired batch (paper eqs. 1-2: one mean
    per domain, weight 1). `last` holds the last call's unweighted terms of each part present, by domain ("source/ce",
    "target/density", ...). A schedule may change `source_weight` between iterations (adapt_wda.yaml).

    Args:
        loss: the loss of each domain's part, e.g. MultiTaskLoss.
        source_weight: the source part's weight.
        source_loss: the source part's own loss (e.g. another density weight); default `loss`.
    """

    def __init__(self, loss: nn.Module, source_weight: float = 1.0, source_loss: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.source_loss = loss if source_loss is None else source_loss
        self.source_weight = source_weight
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`target["num_source"]` says how many leading samples of the batch are source samples."""
        split = int(target["num_source"])
        parts = [slice(0, split), slice(split, len(pred))]
        terms = {k: v for k, v in target.items() if k != "num_source"}
        total, self.last = 0, {}
        for domain, part in zip(("source", "target"), parts):
            if part.stop > part.start:
                weight, loss = (self.source_weight, self.source_loss) if domain == "source" else (1.0, self.loss)
                total = total + weight * loss(pred[part], {k: v[part] for k, v in terms.items()})
                self.last.update({f"{domain}/{k}": v for k, v in getattr(loss, "last", {}).items()})
        return total


def loss_terms_transform(loss: nn.Module, prefix: str = "loss_terms/") -> Callable[[object], dict[str, float] | None]:
    """An `output_transform` for MONAI's StatsHandler / TensorBoardStatsHandler: the unweighted terms `loss` kept in
    its `last` dict at the iteration, as {prefix + name: value} (None before the first call: nothing is written)."""

    def transform(_output: object) -> dict[str, float] | None:
        last = getattr(loss, "last", {})
        return {prefix + name: float(value) for name, value in last.items()} if last else None

    return transform
