"""Class prototypes of pixel features: masked means, confident-pixel masks, k-means clusters (reused by baselines)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.errors import input_error
from bundle.networks.multitask_unet import SEG_CHANNELS, forward_with_features


def masked_mean(features: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor | None:
    """Mean (D,) of `scale`·features over the pixels of (B, D, H, W) `features` where `mask` (B, [1,] H, W) is true
    (`scale` (B, H, W), e.g. inverse feature norms: the mean of normalised features); None when no pixel is."""
    mask = mask.reshape(features.shape[0], *features.shape[-2:]).to(features.dtype)
    count = float(mask.sum())
    if count == 0:
        return None
    return torch.einsum("bdhw,bhw->d", features, mask if scale is None else mask * scale) / count


def inverse_norms(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, H, W) 1 / ||z|| of (B, D, H, W) features (F.normalize's convention: norms clamped at eps)."""
    return features.pow(2).sum(1).sqrt().clamp_min(eps).reciprocal()


def sample_pixels(mask: torch.Tensor, num: int) -> torch.Tensor:
    """Flat (b, y, x) indices of up to `num` distinct random pixels where `mask` is true (torch's global RNG)."""
    candidates = torch.nonzero(mask.reshape(-1)).flatten()
    if len(candidates) <= num:
        return candidates
    return candidates[torch.randperm(len(candidates))[:num].to(candidates.device)]


def gather_pixels(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, D) feature rows of (B, D, H, W) `features` at flat (b, y, x) pixel indices, without copying the map."""
    pixels = features.shape[-2] * features.shape[-1]
    return features.flatten(2)[index // pixels, :, index % pixels]


def class_prototypes(
    features: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    classes: Sequence[int] = (0, 1),
    scale: torch.Tensor | None = None,
) -> dict[int, torch.Tensor | None]:
    """{c: mean feature of the pixels labelled c (and inside `mask`, when given)}; None for a class with no pixel.
    `scale` as in `masked_mean` (`inverse_norms(features)`: means of normalised features); keeps the gradient."""
    labels = labels.reshape(labels.shape[0], *labels.shape[-2:])
    inside = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.reshape(labels.shape).bool()
    return {c: masked_mean(features, (labels == c) & inside, scale) for c in classes}


def stack_prototypes(prototypes: dict[int, torch.Tensor | None], fallback: torch.Tensor | None = None) -> torch.Tensor | None:
    """(C, D) rows of `class_prototypes` in class order; a missing class takes its `fallback` row, else None."""
    rows = [p if p is not None else (None if fallback is None else fallback[i]) for i, p in enumerate(prototypes.values())]
    return None if any(r is None for r in rows) else torch.stack(rows)


def running_mean(old: torch.Tensor | None, mean: torch.Tensor, momentum: float) -> torch.Tensor:
    """p ← m·p + (1 − m)·mean (`mean` itself when there is no `old` yet); keeps `mean`'s gradient, not `old`'s."""
    return mean if old is None else momentum * old.detach().to(mean) + (1 - momentum) * mean


class RunningPrototypes:
    """Class prototypes as running means over batches: each batch's prototype of class c (`class_prototypes`) becomes
    m·p_c + (1 − m)·batch prototype, the gradient flowing through the batch part; a class absent from the batch keeps
    its running prototype (detached). Momentum 0 is per batch: a class absent from the batch has no prototype.

    Args:
        momentum: m in [0, 1): the share of the running prototype kept at each batch.
    """

    def __init__(self, momentum: float = 0.0) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise input_error("prototype_momentum", f"{momentum!r} is not a number in [0, 1) (the share of the running "
                              "prototype kept at each batch)", "pass --prototype_momentum with a number from 0 to below 1")  # fmt: skip
        self.momentum = momentum
        self.prototypes: dict[int, torch.Tensor] = {}  # detached running prototypes by class

    def __call__(self, found: dict[int, torch.Tensor | None]) -> dict[int, torch.Tensor | None]:
        """Blend this batch's {class: prototype or None} into the running ones and return the blend."""
        if self.momentum == 0.0:
            return found
        like = next((batch for batch in found.values() if batch is not None), None)  # device and dtype (after a resume)
        blended = {}
        for c, batch in found.items():
            old = self.prototypes.get(c)
            if batch is None:  # absent from the batch: the running prototype, on the batch's device
                blended[c] = None if old is None else old.to(old if like is None else like, copy=True)
                continue
            blended[c] = running_mean(old, batch, self.momentum)
            self.prototypes[c] = blended[c].detach().clone()
        return blended

    def state_dict(self) -> dict:
        """The running prototypes (on the CPU) by class; the momentum is the run's setting, not state."""
        return {"prototypes": {int(c): p.cpu() for c, p in self.prototypes.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (a checkpoint from before also holds the momentum: not read)."""
        self.prototypes = {int(c): p.clone() for c, p in state["prototypes"].items()}


def prototype_similarity(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) cosine similarity of every pixel of (B, D, H, W) `features` with each of (C, D) `prototypes`."""
    return torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), normalized(prototypes))


def confident(labels: torch.Tensor, probability: torch.Tensor, cls: int, threshold: float) -> torch.Tensor:
    """Pixels labelled `cls` whose predicted probability of `cls` exceeds `threshold` (eq. 7's 1[y = c]·1[p > δe])."""
    labels = labels.reshape(probability.shape[0], *probability.shape[-2:])
    return (labels == cls) & (probability[:, cls] > threshold)


def normalized(prototypes: torch.Tensor) -> torch.Tensor:
    """L2-normalise prototypes along the last axis (a zero vector stays zero)."""
    return F.normalize(prototypes, dim=-1)


def kmeans_centres(features: torch.Tensor, k: int, seed: int = 0, n_init: int = 3) -> torch.Tensor:
    """(k, D) k-means centres (scikit-learn, Lloyd) of (N, D) features; fewer rows than k → the rows themselves."""
    from sklearn.cluster import KMeans  # imported here: only the contrastive runs need scikit-learn

    rows = features.detach().float().cpu()
    if len(rows) <= k:
        return rows.clone()
    model = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed) % (2**32)).fit(rows.numpy().astype(np.float64))
    return torch.as_tensor(model.cluster_centers_, dtype=torch.float32)


def _tile_starts(size: int, tile: int) -> list[int]:
    """Starts of `tile`-long windows covering 0..size (the last one flush with the end)."""
    return sorted({*range(0, max(size - tile, 0) + 1, tile), max(size - tile, 0)})


@torch.no_grad()
def tile_prototypes(
    network: torch.nn.Module,
    items: Sequence[dict],
    tile: int = 256,
    delta_easy: float = 0.95,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor | int]:
    """Eq. 7 over whole labelled slices: {"source_fg", "source_bg"} = mean normalised decoder features of the pixels
    labelled c with p_c > `delta_easy`, seen in `tile`² crops covering each slice (the training crop size: instance
    norm is per crop), and their pixel counts "num_fg", "num_bg". `items`: load_slices dicts with a 0/1 "label"."""
    sums, counts = [torch.zeros((), dtype=torch.float64)] * 2, [0, 0]
    network = network.eval().to(device)
    for item in items:
        image, label = torch.as_tensor(item["image"]), torch.as_tensor(item["label"])
        xs = _tile_starts(image.shape[-1], tile)
        for y in _tile_starts(image.shape[-2], tile):
            crops = torch.stack([image[..., y : y + tile, x : x + tile] for x in xs]).float().to(device)
            labels = torch.stack([label[..., y : y + tile, x : x + tile] for x in xs]).to(device)
            output, features = forward_with_features(network, crops)
            probability, scale = torch.softmax(output[:, list(SEG_CHANNELS)], dim=1), inverse_norms(features)
            for c in (0, 1):
                mask = confident(labels, probability, c, delta_easy)
                counts[c] += int(mask.sum())
                sums[c] = sums[c] + torch.einsum("bdhw,bhw->d", features.double(), (mask * scale).double()).cpu()
    if min(counts) == 0:
        raise ValueError(f"no confident pixels of class {counts.index(0)} (p > {delta_easy}); check model and labels")
    means = {name: (sums[c] / counts[c]).float() for c, name in enumerate(("source_bg", "source_fg"))}
    return {**means, "num_bg": counts[0], "num_fg": counts[1]}
