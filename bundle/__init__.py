"""mitoda: weakly supervised domain-adaptive mitochondria segmentation as a MONAI bundle."""

from bundle.errors import InputError, install_excepthook

install_excepthook()

__all__ = ["InputError"]
