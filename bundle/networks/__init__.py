"""Networks and checkpoint loading."""

from bundle.networks.checkpoint import checkpoint_sha256, load_checkpoint
from bundle.networks.multitask_unet import DENSITY_CHANNEL, SEG_CHANNELS, MultiTaskUNet, forward_with_features

__all__ = ["DENSITY_CHANNEL", "SEG_CHANNELS", "MultiTaskUNet", "checkpoint_sha256", "forward_with_features", "load_checkpoint"]
