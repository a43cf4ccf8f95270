"""PNG: one 2D greyscale image, a volume of one slice (folders of PNG slices are `folder.SliceFolderReader`'s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bundle.data.readers.base import GREY_FIX, OpenArray, VolumeReader, channel_name, error, unreadable


def bilevel_to_grey(data: np.ndarray) -> np.ndarray:
    """Return a 1-bit (bool) slice as uint8 0/255, as a viewer shows it, so it stacks with 8-bit slices."""
    return data.astype(np.uint8) * np.uint8(255) if data.dtype == np.bool_ else data


class PngReader(VolumeReader):
    """A single 2D greyscale PNG (1-bit becomes uint8 0/255); colour or grey+alpha PNGs are refused."""

    kind = "PNG"
    suffixes = (".png",)

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """Decode the image (PNG has no lazy access; one slice is small)."""
        import imageio.v3 as iio  # installed with scikit-image

        try:
            data = np.asarray(iio.imread(path))
        except Exception as exc:
            raise unreadable(path, self.kind, exc) from exc
        if data.ndim == 3:
            raise error(path, f"image has {data.shape[-1]} channels ({channel_name(data.shape[-1])})", GREY_FIX)
        if data.ndim != 2:
            raise error(path, f"PNG decoded to shape {data.shape}", "save each slice as a single 2D greyscale PNG")
        return OpenArray(bilevel_to_grey(data), self.kind)
