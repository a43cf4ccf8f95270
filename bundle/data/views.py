"""Two views of one target crop (same geometry, different photometry) for the weak/strong consistency baselines."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.transforms import Compose, CopyItemsd, EnsureTyped

from bundle.data.paired import prepare_paired_batch

STRONG_KEY = "image_strong"


def _keys(transform: Callable) -> tuple[str, ...]:
    """The keys a dictionary transform acts on (empty for one without `keys`)."""
    return tuple(getattr(transform, "keys", ()))


def two_view_transform(
    geometric: Sequence[Callable],
    weak: Sequence[Callable],
    strong: Sequence[Callable],
    final: Sequence[Callable] = (),
    key: str = "image",
    strong_key: str = STRONG_KEY,
) -> Compose:
    """`geometric` once (crop, flips, elastic: every key), then a copy of `key` as `strong_key`, the `weak`
    photometric transforms on `key` and the `strong` ones on `strong_key`, then `final`; photometric transforms
    that touch any other key are refused, so both views always share the crop and geometry."""
    for name, transforms, allowed in (("weak", weak, key), ("strong", strong, strong_key)):
        for transform in transforms:
            if _keys(transform) != (allowed,):
                found = f"{type(transform).__name__} acts on {_keys(transform)}"
                raise ValueError(f"{name} view transforms must act on {allowed!r} only; {found}")
    copy = CopyItemsd(keys=key, times=1, names=strong_key)
    typed = EnsureTyped(keys=strong_key, track_meta=False)
    return Compose([*geometric, copy, *weak, *strong, *final, typed])


def prepare_two_view_batch(
    batchdata: Mapping[str, Mapping[str, torch.Tensor]],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    strong_key: str = STRONG_KEY,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]:
    """(source + strong target images, paired targets, (), {"teacher": weak target images}) for SupervisedTrainer:
    the strong views take the target rows of the batch, the weak views go to FeatureInferer as the teacher."""
    images, targets = prepare_paired_batch(batchdata, device, non_blocking)
    split = int(targets["num_source"])
    strong = batchdata["target"][strong_key].to(device=device, non_blocking=non_blocking)
    return torch.cat([images[:split], strong]), targets, (), {"teacher": images[split:]}
