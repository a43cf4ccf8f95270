"""A prediction folder in either layout, chosen by its path: TIFF files, or one OME-Zarr image per volume.

`--output_dir DIR` holds DIR/probability.tif, density.tif and instances.tif; a folder whose path ends with `.zarr`
(`OUT.ome.zarr`, see `bundle.data.io.is_zarr_path`) holds the OME-Zarr images OUT.ome.zarr/probability, /density
and /instances instead (chunks of one slice, the input's pixel size in their metadata when known). `instances_3d`
(configs/inference.yaml --instances_3d True) is one more volume of the folder's layout, beside instances_3d.csv.
Whatever writes or reads a prediction folder names its volumes with `prediction_path` and reads them with
`open_prediction` or `read_prediction`, so that evaluation, 3D linking and the fine-tune's checks take both layouts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bundle.data.io import SliceVolume, is_zarr_path, read_volume
from bundle.data.pixel_size import file_pixel_size
from bundle.data.readers import PixelSize
from bundle.data.readers.zarr import METADATA_FILES, create_ome_zarr, multiscales
from bundle.errors import input_error
from bundle.outputs import atomic_outputs, check_output_dir, claim_output_dir

PREDICTIONS = ("probability", "density", "instances")  # what configs/inference.yaml writes
DTYPES = {"probability": np.float32, "density": np.float32, "instances": np.uint32, "instances_3d": np.uint32}
LINKED = "instances_3d"  # linked into 3D from an earlier prediction (bundle.inference.write_instances_3d)
LINKED_TABLE = "instances_3d.csv"  # its table, a CSV file in both layouts
UNFINISHED = ".blocks"  # a blockwise run's record of its finished blocks, removed when its last block is written
SUMMARY_OUTPUTS = ("previews/", "summary.json")  # bundle.inference.summary's, written after the predictions


def prediction_path(prediction_dir: str | os.PathLike, name: str) -> Path:
    """Where the volume `name` (probability, density, instances, instances_3d) of a prediction folder is:
    DIR/NAME.tif, or the OME-Zarr image OUT.zarr/NAME in a folder whose path ends with `.zarr`."""
    folder = Path(os.fspath(prediction_dir)).expanduser()
    return folder / name if is_zarr_path(folder) else folder / f"{name}.tif"


def output_entry(prediction_dir: str | os.PathLike, name: str) -> str:
    """The volume `name` as `bundle.outputs.claim_output_dir` names an output: 'NAME.tif', or 'NAME/' (a folder)."""
    return f"{name}/" if is_zarr_path(prediction_dir) else f"{name}.tif"


def linked_outputs(prediction_dir: str | os.PathLike) -> list[str]:
    """The outputs `write_instances_3d` adds to a prediction folder (an earlier run's are stale after a new one)."""
    return [output_entry(prediction_dir, LINKED), LINKED_TABLE]


def check_prediction_dir(output_dir: str | os.PathLike | None) -> Path:
    """`output_dir` as an absolute Path if a prediction can be written there (`bundle.outputs.check_output_dir`);
    in the OME-Zarr layout it must not be a zarr array or an OME-Zarr image itself (an input volume). Creates
    nothing."""
    path = check_output_dir(output_dir)  # an empty path, or a file in its place
    check_output_dir(path, [output_entry(path, name) for name in PREDICTIONS])
    if is_zarr_path(path) and path.is_dir() and any((path / f).is_file() for f in METADATA_FILES):
        import zarr

        node = zarr.open(store=str(path), mode="r")
        if isinstance(node, zarr.Array) or multiscales(node) is not None:
            kind = "a zarr array" if isinstance(node, zarr.Array) else "an OME-Zarr image"
            raise input_error(path, f"is {kind}, not a folder of predictions",
                              "pass a new --output_dir, e.g. OUT.ome.zarr")  # fmt: skip
    return path


def claim_prediction_dir(output_dir: str | os.PathLike | None, resume: bool = False) -> Path:
    """Check `output_dir` (`check_prediction_dir`), create and lock it (`bundle.outputs.claim_output_dir`) and remove
    what an earlier run left that this one does not write: 3D linking, and an unfinished blockwise run's record
    unless this run is one that may resume it (`resume`)."""
    path = check_prediction_dir(output_dir)
    stale = [*linked_outputs(path), *SUMMARY_OUTPUTS, f"{UNFINISHED}.*.tmp/", *([] if resume else [f"{UNFINISHED}/"])]
    return claim_output_dir(path, [output_entry(path, name) for name in PREDICTIONS], stale=stale)


def require_predictions(prediction_dir: str | os.PathLike, names: Sequence[str]) -> None:
    """One-line InputError unless every volume `names` of `prediction_dir` is there and its run has finished."""
    folder = Path(os.fspath(prediction_dir)).expanduser()
    if (folder / UNFINISHED).is_dir():
        raise input_error(folder, "prediction is unfinished: a blockwise run into this folder stopped before its "
                          "last block", "run the same command again to finish it")  # fmt: skip
    for name in names:
        path = prediction_path(folder, name)
        if not path.exists():
            raise input_error(path, "prediction file not found",
                              f"run configs/inference.yaml with --output_dir {folder}")  # fmt: skip


def open_prediction(prediction_dir: str | os.PathLike, name: str) -> SliceVolume:
    """The volume `name` of a finished prediction folder, read lazily (slice by slice or by blocks)."""
    require_predictions(prediction_dir, [name])
    return SliceVolume(prediction_path(prediction_dir, name))


def read_prediction(prediction_dir: str | os.PathLike, name: str) -> np.ndarray:
    """The whole volume `name` of a finished prediction folder, as a (Z, Y, X) array."""
    require_predictions(prediction_dir, [name])
    return read_volume(prediction_path(prediction_dir, name))


def folder_pixel_size(prediction_dir: str | os.PathLike) -> PixelSize | None:
    """The pixel size an OME-Zarr prediction folder states (its probability image's), for the volumes added to it
    later; None in the TIFF layout."""
    return file_pixel_size(prediction_path(prediction_dir, "probability")) if is_zarr_path(prediction_dir) else None


class _TiffPages:
    """Slices appended as the pages of one multi-page TIFF, in order."""

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        import tifffile

        self._file = tifffile.TiffWriter(path, bigtiff=shape[0] * shape[1] * shape[2] * 4 > 2**31)  # near 4 GB

    def write(self, index: int, page: np.ndarray) -> None:
        """Append `page` (the next slice; `index` is implied by the order)."""
        # metadata=None: plain pages of one shape, which TIFF readers stack into one (Z, Y, X) series. Float maps
        # stay uncompressed: zlib saves ~10 % for ~2 s CPU per 4096² page.
        compression = None if page.dtype.kind == "f" else "zlib"
        self._file.write(page, compression=compression, metadata=None, photometric="minisblack")

    def close(self) -> None:
        """Finish the file."""
        self._file.close()


class _ZarrSlices:
    """Slices written into the one-slice chunks of an OME-Zarr image."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: type, pixel_size: PixelSize | None,
                 name: str) -> None:  # fmt: skip
        self._array = create_ome_zarr(path, shape, dtype, pixel_size=pixel_size, name=name)

    def write(self, index: int, page: np.ndarray) -> None:
        """Write `page` as slice `index`."""
        self._array[index] = page

    def close(self) -> None:
        """Nothing to finish: every chunk is written when `write` returns."""


@contextmanager
def slice_writers(prediction_dir: str | os.PathLike, shape: tuple[int, int, int], pixel_size: PixelSize | None = None,
                  names: Sequence[str] = PREDICTIONS) -> Iterator[list[_TiffPages | _ZarrSlices]]:  # fmt: skip
    """One writer per volume `names` of a (Z, Y, X) `shape` in the folder's layout; `writer.write(z, page)` writes
    slice z (TIFF: in order). The volumes are written under temporary names that replace the folder's only when
    the block completes (`atomic_outputs`); `pixel_size` (y, x nm) goes into OME-Zarr metadata."""
    finals = [prediction_path(prediction_dir, name) for name in names]
    with atomic_outputs(finals) as partials:
        writers: list[_TiffPages | _ZarrSlices] = []
        try:
            for name, final, partial in zip(names, finals, partials):
                if is_zarr_path(final):
                    writers.append(_ZarrSlices(partial, shape, DTYPES[name], pixel_size, final.name))
                else:
                    writers.append(_TiffPages(partial, shape))
            yield writers
        finally:
            for writer in writers:
                writer.close()
