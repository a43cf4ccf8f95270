"""Source/target pairs for adaptation: one dataset item holds a source sample and a random target sample (source-free:
a target sample alone)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import Dataset

TARGET_KEYS = ("label", "density", "density_mask", "point_mask")
# fill value of a key that a part lacks: source density is dense (mask 1); no ground-truth point instances (0)
MISSING_FILL = {"density_mask": 1.0, "point_mask": 0.0}


class PairedDataset(Dataset):
    """Item i = {"source": source[i], "target": target[random]}; the target index uses torch's per-worker RNG.
    Source-free (`source` None): item i = {"target": target[i]}."""

    def __init__(self, source: Dataset | None, target: Dataset) -> None:
        self.source = source
        self.target = target

    def __len__(self) -> int:
        return len(self.target if self.source is None else self.source)

    def __getitem__(self, index: int) -> dict:
        if self.source is None:
            return {"target": self.target[index]}
        target_index = int(torch.randint(len(self.target), (1,)).item())
        return {"source": self.source[index], "target": self.target[target_index]}


def _get(part: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """part[key], or MISSING_FILL[key] shaped like part["density"] when the part has no such key (class weights: 1
    for both classes, one row per sample)."""
    if key in part:
        return part[key]
    if key == "class_weights":
        return torch.ones(len(part["density"]), 2, dtype=torch.float32)
    return torch.full_like(part["density"], MISSING_FILL[key])


def prepare_paired_batch(
    batchdata: Mapping[str, Mapping[str, torch.Tensor]],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(source and target images stacked, targets stacked + "num_source") for SupervisedTrainer and AdaptationLoss;
    a batch without "source" (source-free) gives the target part alone and num_source 0."""
    parts = [batchdata[name] for name in ("source", "target") if name in batchdata]
    keys = TARGET_KEYS + (("class_weights",) if any("class_weights" in part for part in parts) else ())
    targets = {key: torch.cat([_get(part, key) for part in parts]) for key in keys}
    moved = {k: v.to(device=device, non_blocking=non_blocking) for k, v in targets.items()}
    moved["num_source"] = torch.tensor(len(batchdata["source"]["image"]) if "source" in batchdata else 0)
    images = torch.cat([part["image"] for part in parts]).to(device=device, non_blocking=non_blocking)
    return images, moved
