"""Test-time augmentation ensemble (paper III-B: "the predictions of 5 differently augmented versions")."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bundle.inference.postprocess import split_output

# (name, quarter turns in the (H, W) plane, flipped axis or None); each view is undone after the network.
TTA_VIEWS: tuple[tuple[str, int, int | None], ...] = (
    ("identity", 0, None),
    ("flip_h", 0, -2),
    ("flip_w", 0, -1),
    ("rot90", 1, None),
    ("rot270", 3, None),
)


def _apply(x: torch.Tensor, turns: int, flip: int | None) -> torch.Tensor:
    """Flip (if any), then rotate by `turns` quarter turns over the last two axes."""
    if flip is not None:
        x = torch.flip(x, dims=(flip,))
    return torch.rot90(x, k=turns, dims=(-2, -1)) if turns % 4 else x


def _undo(x: torch.Tensor, turns: int, flip: int | None) -> torch.Tensor:
    """Inverse of `_apply`: rotate back, then flip back."""
    if turns % 4:
        x = torch.rot90(x, k=-turns, dims=(-2, -1))
    return torch.flip(x, dims=(flip,)) if flip is not None else x


def tta_predict(
    network: torch.nn.Module,
    image: torch.Tensor,
    inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor],
    views: int = len(TTA_VIEWS),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the first `views` TTA_VIEWS of (foreground probability, density), each (B, 1, H, W), no gradients.

    `inferer(view, network)` must accept any H, W (rot90 swaps them), e.g. monai's SlidingWindowInferer. The
    network's train/eval mode is left to the caller.
    """
    if not 1 <= views <= len(TTA_VIEWS):
        raise ValueError(f"views must be in 1..{len(TTA_VIEWS)}, got {views}")
    if image.ndim != 4:
        raise ValueError(f"tta_predict expects a (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    probability_sum = density_sum = None
    with torch.no_grad():
        for _, turns, flip in TTA_VIEWS[:views]:
            probability, density = split_output(inferer(_apply(image, turns, flip), network))
            probability, density = _undo(probability, turns, flip), _undo(density, turns, flip)
            probability_sum = probability if probability_sum is None else probability_sum + probability
            density_sum = density if density_sum is None else density_sum + density
    return probability_sum / views, density_sum / views
