"""Sliding-window prediction of whole EM volumes, slice by slice, into probability/density/instance TIFFs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.inferers import Inferer
from tqdm import tqdm

from bundle.data.dataset import normalize_slices
from bundle.data.io import read_volume, select_slices
from bundle.errors import InputError
from bundle.inference.postprocess import instances_from_prediction, split_output

OUTPUT_FILES = ("probability.tif", "density.tif", "instances.tif")


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create `output_dir` (or accept an existing folder); a file in its place is an InputError."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: output_dir is a file; pass a folder path for the predictions")
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

    def __call__(self, input_image: str | os.PathLike, output_dir: str | os.PathLike, slices: str | Sequence[int] | None = None) -> dict[str, Path]:
        """Predict `input_image` (optionally only `slices`) into `output_dir`; files appear only when complete."""
        volume = select_slices(read_volume(input_image), slices, path=str(input_image))
        volume = normalize_slices(volume, input_image)
        output_dir = prepare_output_dir(output_dir)
        finals = {name: output_dir / name for name in OUTPUT_FILES}
        partials = {name: path.with_name(path.name + ".partial") for name, path in finals.items()}
        writers = {name: tifffile.TiffWriter(path) for name, path in partials.items()}
        offset = 0
        try:
            for image in tqdm(volume, desc=f"predict {Path(input_image).name}", unit="slice", disable=not self.progress):
                probability, density = predict_slice(self.network, self.inferer, image, self.device)
                instances = self.postprocessing(probability, density).astype(np.uint32)
                instances[instances > 0] += offset  # ids unique across the volume
                offset = max(offset, int(instances.max()))
                for name, page in zip(OUTPUT_FILES, (probability, density, instances)):
                    # metadata=None: plain pages of one shape, which TIFF readers stack into one (Z, Y, X) series
                    writers[name].write(page, compression="zlib", metadata=None, photometric="minisblack")
        except BaseException:
            for name, writer in writers.items():
                writer.close()
                partials[name].unlink(missing_ok=True)
            raise
        for name, writer in writers.items():
            writer.close()
            os.replace(partials[name], finals[name])
        return finals
