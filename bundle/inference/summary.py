"""What a prediction found, for a volume without labels: a summary (printed and in summary.json) and a few previews.

`summarize_prediction` reads a finished prediction folder (either layout) slice by slice, so its memory is one
slice whatever the volume size, and writes into it:
- previews/preview_zNNN.png: the EM slice NNN (the input's slice number) with every instance outlined in a colour of
  its own, under a legend (file, slice, instance count, scale bar when the pixel size is known), at most
  `preview_px` pixels wide;
- summary.json: instance count, mean size in pixels and (pixel size known) in µm², the share of foreground pixels,
  the 3D instances of instances_3d.csv when the run linked them (count, mean volume in voxels and µm³), and where
  each file is.
The same lines are logged at the end of the run (logger "mitoda.summary").
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from bundle.data.io import SliceVolume, parse_slices
from bundle.data.readers import PixelSize
from bundle.errors import input_error
from bundle.inference.instances3d import VOLUME_UM3
from bundle.inference.prediction_folder import (
    LINKED,
    LINKED_TABLE,
    PREDICTIONS,
    SUMMARY_OUTPUTS,
    open_prediction,
    prediction_path,
)
from bundle.metrics.overlay import OUTLINE_COLOURS, outline_overlay, scale_bar, with_legend
from bundle.outputs import atomic_output, atomic_outputs

PREVIEWS, SUMMARY = (name.rstrip("/") for name in SUMMARY_OUTPUTS)  # previews/preview_zNNN.png, summary.json
logger = logging.getLogger("mitoda.summary")


def check_previews(previews: int) -> None:
    """One-line InputError unless `previews` (how many slices to draw) is a whole number >= 0."""
    if isinstance(previews, bool) or not isinstance(previews, int) or previews < 0:
        raise input_error("--previews", f"{previews!r} is not a number of slices", "pass e.g. 3, or 0 for none")


def preview_indices(depth: int, count: int) -> list[int]:
    """`count` evenly spaced indices of `depth` slices, the first and the last among them (fewer when depth is)."""
    return sorted({int(round(i)) for i in np.linspace(0, depth - 1, min(count, depth))}) if count > 0 else []


def instance_sizes(instances: np.ndarray) -> np.ndarray:
    """Pixel count of every instance id present in one slice (ids > 0)."""
    counts = np.bincount(instances.ravel().astype(np.int64, copy=False))
    return counts[1:][counts[1:] > 0]


def _preview(image: np.ndarray, instances: np.ndarray, title: str, pixel_size: PixelSize | None,
             preview_px: int) -> np.ndarray:  # fmt: skip
    """The outlined slice, shrunk by an integer step to at most `preview_px` wide, under its legend."""
    step = max(1, -(-max(image.shape) // preview_px))
    rgb = outline_overlay(image[::step, ::step], instances[::step, ::step])
    count = int(np.unique(instances[instances > 0]).size)
    lines = [[(None, title), (None, f"{count} instances")],
             [(OUTLINE_COLOURS[0], "outline: one colour per instance"),
              (None, f"shown at 1/{step} of the pixels" if step > 1 else "full resolution")]]  # fmt: skip
    bar = scale_bar(float(np.mean(pixel_size)) * step, rgb.shape[1]) if pixel_size else None
    return with_legend(rgb, lines, bar)


def _linked_summary(prediction_dir: Path) -> dict | None:
    """Count and mean volume of the 3D instances in instances_3d.csv, if the run linked them."""
    table = prediction_dir / LINKED_TABLE
    if not table.is_file():
        return None
    with open(table, newline="") as file:
        rows = list(csv.DictReader(file))
    volumes = [float(row["volume"]) for row in rows]
    summary = {"count": len(rows), "mean_volume_voxels": float(np.mean(volumes)) if rows else 0.0,
               "table": str(table), "volume": str(prediction_path(prediction_dir, LINKED))}  # fmt: skip
    if rows and VOLUME_UM3 in rows[0]:
        summary["mean_volume_um3"] = float(np.mean([float(row[VOLUME_UM3]) for row in rows]))
    return summary


def summarize_prediction(
    prediction_dir: str | os.PathLike,
    input_image: str | os.PathLike,
    slices: str | Sequence[int] | None = None,
    pixel_size: PixelSize | None = None,
    previews: int = 3,
    preview_px: int = 1024,
) -> dict:
    """Summarise a finished prediction of `input_image` (its slices `slices`) and draw `previews` of its slices
    (evenly spaced, first and last included; 0: none) into the folder; log the summary and return it.

    Args:
        prediction_dir: the --output_dir of configs/inference.yaml (TIFF or OME-Zarr layout).
        input_image: the volume that was predicted (the previews show its slices).
        slices: the --slices that were predicted (None: all).
        pixel_size: (y, x) nm per pixel of the input, if known: sizes in µm² and a scale bar.
        previews: how many slices to draw.
        preview_px: the largest width or height of a preview (larger slices are shown at 1/k of their pixels).
    """
    check_previews(previews)
    prediction_dir = Path(os.fspath(prediction_dir)).expanduser()
    sizes, foreground, pixels, drawn = [], 0, 0, {}
    with open_prediction(prediction_dir, "instances") as instances, SliceVolume(input_image) as volume:
        indices = parse_slices(slices, len(volume), path=str(input_image))
        shown = preview_indices(len(instances), previews)
        for i in range(len(instances)):
            ids = np.asarray(instances[i])
            sizes.append(instance_sizes(ids))
            foreground, pixels = foreground + int(np.count_nonzero(ids)), pixels + ids.size
            if i in shown:
                z = indices[i]
                drawn[z] = _preview(np.asarray(volume[z], dtype=np.float32), ids, f"{volume.path.name}  slice {z}",
                                    pixel_size, preview_px)  # fmt: skip
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    area = float(np.prod(pixel_size)) / 1e6 if pixel_size else None  # µm² per pixel
    summary = {
        "input_image": str(input_image), "slices": len(indices), "instances_2d": int(sizes.size),
        "instances_per_slice": sizes.size / max(len(indices), 1),
        "mean_size_px": float(sizes.mean()) if sizes.size else 0.0,
        "mean_size_um2": float(sizes.mean()) * area if sizes.size and area else None,
        "foreground_fraction": foreground / max(pixels, 1),
        "pixel_size_nm": list(pixel_size) if pixel_size else None,
        "instances_3d": _linked_summary(prediction_dir),
        "outputs": {name: str(prediction_path(prediction_dir, name)) for name in PREDICTIONS},
        "previews": [str(prediction_dir / PREVIEWS / f"preview_z{z:03d}.png") for z in drawn],
    }  # fmt: skip
    if drawn:  # (an earlier prediction's previews were removed when this one claimed the folder)
        with atomic_outputs([prediction_dir / PREVIEWS]) as (partial,):
            partial.mkdir()
            for z, rgb in drawn.items():
                iio.imwrite(partial / f"preview_z{z:03d}.png", rgb, extension=".png")
    with atomic_output(prediction_dir / SUMMARY) as partial:
        partial.write_text(json.dumps(summary, indent=2) + "\n")
    for line in summary_lines(summary):
        logger.info(line)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """The summary as a few lines for a person."""
    size = f"{summary['mean_size_px']:.0f} px"
    if summary["mean_size_um2"] is not None:
        size += f" = {summary['mean_size_um2']:.3g} µm² at {' x '.join(f'{v:g}' for v in summary['pixel_size_nm'])} nm"
    lines = [f"found {summary['instances_2d']} instances in {summary['slices']} slices "
             f"({summary['instances_per_slice']:.1f} per slice, mean size {size}, "
             f"{100 * summary['foreground_fraction']:.1f} % of the pixels)"]  # fmt: skip
    linked = summary["instances_3d"]
    if linked is not None:
        volume = f"{linked['mean_volume_voxels']:.0f} voxels"
        if "mean_volume_um3" in linked:
            volume += f" = {linked['mean_volume_um3']:.3g} µm³"
        lines.append(f"linked into {linked['count']} 3D instances (mean volume {volume}): {linked['table']}")
    lines.append(f"outputs: {', '.join(summary['outputs'].values())}")
    if summary["previews"]:
        lines.append(f"previews: {', '.join(summary['previews'])}")
    return lines
