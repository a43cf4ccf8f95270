"""2D multitask U-Net: shared encoder-decoder, a segmentation head and a centre-density head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

SEG_CHANNELS = (0, 1)  # background / mitochondrion logits
DENSITY_CHANNEL = 2  # centre density, instances per pixel (sums to the instance count)


class SkipUpCat(UpCat):
    """MONAI's `UpCat` (upsample, concatenate the encoder's features, two convolutions) that pads the upsampled
    features only where the encoder's are larger (a size that is not a multiple of 16). `UpCat` always calls a
    replicate pad, with zero widths on most inputs: a copy, and under `torch.compile` a backward pass that fails."""

    def forward(self, x: torch.Tensor, x_e: torch.Tensor | None) -> torch.Tensor:
        """Upsample `x`, pad it to `x_e`'s size where that is one larger, concatenate (x_e first), convolve."""
        x_0 = self.upsample(x)
        if x_e is None:
            return self.convs(x_0)
        pad = [0, int(x_e.shape[-1] != x_0.shape[-1]), 0, int(x_e.shape[-2] != x_0.shape[-2])]
        if any(pad):
            x_0 = F.pad(x_0, pad, "replicate")
        return self.convs(torch.cat([x_e, x_0], dim=1))


class MultiTaskUNet(nn.Module):
    """U-Net f_D∘f_E with heads f_S (2-class logits) and f_R (non-negative density); forward returns one tensor."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        features: Sequence[int] | None = None,
        density_scale: float = 1000.0,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        fea = tuple(features) if features is not None else (width, width, 2 * width, 4 * width, 8 * width, width)
        if len(fea) != 6:
            raise ValueError(f"features needs six values (five encoder levels + decoder output), got {fea}")
        self.features = fea
        self.density_scale = float(density_scale)
        self.conv_0 = TwoConv(2, in_channels, fea[0], act, norm, True, dropout)
        self.down_1 = Down(2, fea[0], fea[1], act, norm, True, dropout)
        self.down_2 = Down(2, fea[1], fea[2], act, norm, True, dropout)
        self.down_3 = Down(2, fea[2], fea[3], act, norm, True, dropout)
        self.down_4 = Down(2, fea[3], fea[4], act, norm, True, dropout)
        self.upcat_4 = SkipUpCat(2, fea[4], fea[3], fea[3], act, norm, True, dropout, upsample)
        self.upcat_3 = SkipUpCat(2, fea[3], fea[2], fea[2], act, norm, True, dropout, upsample)
        self.upcat_2 = SkipUpCat(2, fea[2], fea[1], fea[1], act, norm, True, dropout, upsample)
        self.upcat_1 = SkipUpCat(2, fea[1], fea[0], fea[5], act, norm, True, dropout, upsample, halves=False)
        self.seg_head = nn.Conv2d(fea[5], len(SEG_CHANNELS), kernel_size=1)
        self.density_head = nn.Conv2d(fea[5], 1, kernel_size=1)

    @property
    def feature_channels(self) -> int:
        """Number of channels of the shared decoder features z = f_D∘f_E(x)."""
        return self.features[5]

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Shared decoder features z = f_D∘f_E(x), shape (B, feature_channels, H, W)."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u4 = self.upcat_4(x4, x3)
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        return self.upcat_1(u2, x0)

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (2 channels) and density (1 channel, >= 0) concatenated on the channel axis."""
        density = F.softplus(self.density_head(features)) / self.density_scale
        return torch.cat([self.seg_head(features), density], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W): channels 0-1 segmentation logits, channel 2 centre density (instances per pixel)."""
        return self.heads(self.decode(x))


def forward_with_features(network: nn.Module, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, decoder features) of a `MultiTaskUNet` in one pass, for losses that need the features. The pass is the
    network's own call, so that a DistributedDataParallel wrapper sees it and syncs the gradients; the features are
    what the segmentation head receives."""
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    captured: list[torch.Tensor] = []
    handle = module.seg_head.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
    try:
        output = network(x, *args, **kwargs)
    finally:
        handle.remove()
    return output, captured[-1]
