"""Sliding-window prediction of whole EM volumes, slice by slice, into probability/density/instance TIFFs.

The input is read one slice at a time (`SliceVolume`) and each slice is normalised on its own, so the memory
needed depends on the slice size, not on the number of slices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.inferers import Inferer
from tqdm import tqdm

from bundle.data.dataset import normalize_slice
from bundle.data.io import SliceVolume, parse_slices
from bundle.errors import InputError
from bundle.inference.postprocess import instances_from_prediction, split_output

OUTPUT_FILES = ("probability.tif", "density.tif", "instances.tif")


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Return `output_dir` as a Path; a file in its place is an InputError (nothing is created)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: output_dir is a file; pass a folder path for the predictions")
    return output_dir


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create `output_dir` (or accept an existing folder); a file in its place is an InputError."""
    output_dir = check_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


@torch.no_grad()
def predict_slice(network: torch.nn.Module, inferer: Inferer, image: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(foreground probability, density) of one normalised 2D slice, each (Y, X) float32."""
    batch = torch.as_tensor(image, dtype=torch.float32, device=device)[None, None]
    probability, density = split_output(inferer(batch, network))
    return probability[0, 0].cpu().numpy(), density[0, 0].cpu().numpy()


class VolumePredictor:
    """Predict a (Z, Y, X) volume slice by slice and write probability.tif, density.tif and instances.tif."""

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Inferer,
        postprocessing: Callable[..., np.ndarray] = instances_from_prediction,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        self.network = network.eval()
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.progress = progress

    def predict_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probability, density, instances) of one normalised 2D slice; instance ids start at 1 on every slice."""
        probability, density = predict_slice(self.network, self.inferer, image, self.device)
        return probability, density, self.postprocessing(probability, density)

    def __call__(self, input_image: str | os.PathLike, output_dir: str | os.PathLike, slices: str | Sequence[int] | None = None) -> dict[str, Path]:
        """Predict `input_image` (optionally only `slices`) into `output_dir`; files appear only when complete."""
        with SliceVolume(input_image) as volume:
            indices = parse_slices(slices, len(volume), path=str(input_image))
            output_dir = check_output_dir(output_dir)
            # The first slice is checked before anything is created, so a blank or NaN image writes nothing.
            first = normalize_slice(volume[indices[0]], input_image, indices[0])
            return self._write(volume, indices, first, output_dir)

    def _write(self, volume: SliceVolume, indices: list[int], first: np.ndarray | None, output_dir: Path) -> dict[str, Path]:
        """Predict the slices `indices` of `volume` page by page into `*.partial` files, renamed when all are done."""
        output_dir.mkdir(parents=True, exist_ok=True)
        finals = {name: output_dir / name for name in OUTPUT_FILES}
        partials = {name: path.with_name(path.name + ".partial") for name, path in finals.items()}
        writers = {name: tifffile.TiffWriter(path, bigtiff=self._bigtiff(volume, indices)) for name, path in partials.items()}
        offset = 0
        try:
            for z in tqdm(indices, desc=f"predict {volume.path.name}", unit="slice", disable=not self.progress):
                image = normalize_slice(volume[z], volume.path, z) if first is None else first
                first = None  # not kept alive for the whole volume
                probability, density, instances = self.predict_image(image)
                instances = instances.astype(np.uint32, copy=False)
                instances[instances > 0] += offset  # ids unique across the volume
                offset = max(offset, int(instances.max()))
                for name, page in zip(OUTPUT_FILES, (probability, density, instances)):
                    # metadata=None: plain pages of one shape, which TIFF readers stack into one (Z, Y, X) series.
                    # Float maps stay uncompressed: zlib saves ~10 % on them for ~2 s CPU per 4096² page.
                    compression = None if page.dtype.kind == "f" else "zlib"
                    writers[name].write(page, compression=compression, metadata=None, photometric="minisblack")
        except BaseException:
            for name, writer in writers.items():
                writer.close()
                partials[name].unlink(missing_ok=True)
            raise
        for name, writer in writers.items():
            writer.close()
            os.replace(partials[name], finals[name])
        return finals

    @staticmethod
    def _bigtiff(volume: SliceVolume, indices: list[int]) -> bool:
        """BigTIFF when a float32 output file could come near the 4 GB limit of classic TIFF."""
        return len(indices) * volume.shape[1] * volume.shape[2] * 4 > 2**31
