"""Sliding-window prediction of whole EM volumes, slice by slice, into a prediction folder (TIFF or OME-Zarr).

The input is read one slice at a time (`SliceVolume`) and each slice is normalised on its own, so the memory
needed depends on the slice size, not on the number of slices. The folder's layout follows its path
(`bundle.inference.prediction_folder`): DIR/probability.tif, density.tif, instances.tif, or the OME-Zarr images
OUT.ome.zarr/probability, /density, /instances.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer, SlidingWindowInferer
from tqdm import tqdm

from bundle.data.dataset import normalize_slice
from bundle.data.io import SliceVolume, parse_slices
from bundle.data.pixel_size import resample_slice, scaled_shape
from bundle.data.readers import PixelSize
from bundle.errors import InputError
from bundle.inference.postprocess import instances_from_prediction, split_output
from bundle.inference.prediction_folder import (
    PREDICTIONS,
    check_prediction_dir,
    claim_prediction_dir,
    prediction_path,
    slice_writers,
)
from bundle.inference.runtime import prediction_network


@torch.no_grad()
def predict_slice(network: torch.nn.Module, inferer: Inferer, image: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(foreground probability, density) of one normalised 2D slice, each (Y, X) float32.

    On a slice smaller than a sliding-window inferer's window, the window shrinks to the slice: MONAI would pad the
    slice with zeros, which then enter the network's instance normalisation (scripts/small_slices.py, 256² EPFL
    crops: Dice 0.939 with the window shrunk, 0.844 zero-padded, 0.945 cut from the whole slice).
    """
    window = getattr(inferer, "roi_size", None)
    if isinstance(inferer, SlidingWindowInferer) and any(w > n for w, n in zip(window, image.shape)):
        inferer = SlidingWindowInferer([min(w, n) for w, n in zip(window, image.shape)], inferer.sw_batch_size,
                                       inferer.overlap, mode=inferer.mode)  # fmt: skip
    batch = torch.as_tensor(image, dtype=torch.float32, device=device)[None, None]
    probability, density = split_output(inferer(batch, network))
    return probability[0, 0].cpu().numpy(), density[0, 0].cpu().numpy()


def open_input(input_image: str | os.PathLike | None) -> SliceVolume:
    """The volume to predict, opened lazily; a missing `--input_image` is a one-line InputError."""
    if input_image is None or not os.fspath(input_image).strip():
        raise InputError("input_image: no volume given; pass --input_image VOL (the EM volume to predict)")
    return SliceVolume(input_image)


class VolumePredictor:
    """Predict a (Z, Y, X) volume slice by slice into a prediction folder: probability, density and instances, as
    TIFF files or, in a folder whose path ends with `.zarr`, OME-Zarr images (`bundle.inference.prediction_folder`).

    Args:
        network: the multitask network (weights loaded).
        inferer: the sliding-window inferer of one slice.
        postprocessing: (probability, density) -> instance ids of one slice, from 1.
        device: where the network runs.
        progress: show a progress bar.
        scale: (y, x) factors from the input's pixels to the model's (`bundle.data.pixel_size.model_scale`).
        pixel_size: (y, x) nm per pixel of the input, written into OME-Zarr outputs when known.
        runtime: where the network runs (`bundle.inference.runtime`): "eager" (the module itself), "openvino" (a
            compiled CPU copy of its weights, 2.4-3x faster on a CPU) or "auto" (openvino on a CPU when
            installed; configs/inference.yaml's default).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Inferer,
        postprocessing: Callable[..., np.ndarray] = instances_from_prediction,
        device: str | torch.device = "cpu",
        progress: bool = True,
        scale: Sequence[float] = (1.0, 1.0),
        pixel_size: PixelSize | None = None,
        runtime: str = "eager",
    ) -> None:
        self.network = prediction_network(network.eval(), runtime, device)
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.progress = progress
        self.scale = (float(scale[0]), float(scale[-1]))  # (y, x) factors from the input's pixels to the model's
        self.pixel_size = pixel_size

    def predict_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probability, density, instances) of one normalised 2D slice, on its own grid whatever `scale` is;
        instance ids start at 1 on every slice. The density keeps its sum (the count) through the resampling."""
        shape = scaled_shape(image.shape, self.scale)
        probability, density = predict_slice(self.network, self.inferer, resample_slice(image, shape), self.device)
        if shape != image.shape:
            probability = np.clip(resample_slice(probability, image.shape), 0.0, 1.0)
            density = resample_slice(density, image.shape) * (shape[0] * shape[1] / image.size)
        return probability, density, self.postprocessing(probability, density)

    def __call__(self, input_image: str | os.PathLike, output_dir: str | os.PathLike, slices: str | Sequence[int] | None = None) -> dict[str, Path]:
        """Predict `input_image` (optionally only `slices`) into `output_dir`; outputs appear only when complete.
        Returns the outputs by name (probability.tif, ... or probability, ...)."""
        with open_input(input_image) as volume:
            indices = parse_slices(slices, len(volume), path=str(input_image))
            check_prediction_dir(output_dir)
            # The first slice is checked before anything is created, so a blank or NaN image writes nothing.
            first = normalize_slice(volume[indices[0]], input_image, indices[0])
            output_dir = claim_prediction_dir(output_dir)
            return self._write(volume, indices, first, output_dir)

    def _write(self, volume: SliceVolume, indices: list[int], first: np.ndarray | None, output_dir: Path) -> dict[str, Path]:
        """Predict the slices `indices` of `volume` slice by slice into temporary outputs, renamed when all are done."""
        shape = (len(indices), *volume.shape[1:])
        with slice_writers(output_dir, shape, self.pixel_size) as writers:
            offset = 0
            bar = tqdm(indices, desc=f"predict {volume.path.name}", unit="slice", disable=not self.progress)
            for i, z in enumerate(bar):
                image = normalize_slice(volume[z], volume.path, z) if first is None else first
                first = None  # not kept alive for the whole volume
                probability, density, instances = self.predict_image(image)
                instances = instances.astype(np.uint32, copy=False)
                instances[instances > 0] += offset  # ids unique across the volume
                offset = max(offset, int(instances.max()))
                for writer, page in zip(writers, (probability, density, instances)):
                    writer.write(i, page)
        return {path.name: path for path in (prediction_path(output_dir, name) for name in PREDICTIONS)}
