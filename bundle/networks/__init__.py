"""Networks and checkpoint loading."""

from bundle.networks.checkpoint import checkpoint_sha256, load_checkpoint
from bundle.networks.multitask_unet import DENSITY_CHANNEL, SEG_CHANNELS, MultiTaskUNet

__all__ = ["DENSITY_CHANNEL", "SEG_CHANNELS", "MultiTaskUNet", "checkpoint_sha256", "load_checkpoint"]
