"""Link the 2D predictions of a volume across z into 3D instances, with a per-instance table (CSV).

The `components` method runs in bounded memory: `BlockComponents` labels blocks of `block_slices` whole slices
(blocks along z only), merges the labels that touch across the faces between blocks and drops objects under
`min_size` by their merged size, so that its ids equal those of labelling the whole volume at once
(`label_instances`). `write_instances_3d` writes them one slice at a time (TIFF pages, or an OME-Zarr image's chunks in an OME-Zarr
prediction folder, `bundle.inference.prediction_folder`) while `InstanceTable` accumulates
the per-instance table from the same blocks. Memory: about `BYTES_PER_BLOCK_VOXEL` per voxel of a block (one block
of probability, its foreground and its labels) and a few numbers per block label; never the whole volume.

The `watershed` method stays in memory: its seeds (`peak_local_max` thins the density peaks greedily over the whole
volume) and its flooding (a priority flood along paths of any length) are global, so a blockwise version would give
other instances near block faces. It needs about `WATERSHED_BYTES_PER_VOXEL` per voxel of the volume and is refused
with one line when that exceeds the memory limit.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components
from skimage.measure import label as connected_components

from bundle.data.io import SliceVolume, check_finite
from bundle.errors import InputError, input_error
from bundle.inference.postprocess import kept_ids, label_instances
from bundle.inference.prediction_folder import (
    LINKED,
    LINKED_TABLE,
    folder_pixel_size,
    open_prediction,
    prediction_path,
    slice_writers,
)
from bundle.outputs import atomic_output

TABLE_COLUMNS = ("id", "volume", "z0", "y0", "x0", "z1", "y1", "x1", "centroid_z", "centroid_y", "centroid_x")
VOLUME_UM3 = "volume_um3"  # the last column, when the voxel size is known
BLOCK_SLICES = 16  # slices labelled at a time by default (2.7 GB for slices of 4096 x 4096)
BYTES_PER_BLOCK_VOXEL = 10  # peak of BlockComponents and InstanceTable per voxel of a block (tracemalloc)
WATERSHED_BYTES_PER_VOXEL = 40  # peak of label_instances(method="watershed") per voxel, inputs included
logger = logging.getLogger("mitoda.instances3d")


def _read_slices(volume: SliceVolume | np.ndarray, start: int, stop: int) -> np.ndarray:
    """Slices `start:stop` of a volume file (NaN/inf refused) or of an array, as (Z, Y, X)."""
    if isinstance(volume, SliceVolume):
        return check_finite(volume.read(slice(start, stop)), volume.path)
    return np.asarray(volume[start:stop])


class BlockComponents:
    """6-connected 3D components of `probability >= threshold`, labelled block by block in bounded memory.

    Building it is the first pass: each block of `block_slices` whole slices is labelled on its own (face
    connectivity, as `label_instances`), the size of each block label is kept, and the labels that face each other
    across the face between two blocks (same y, x in the last slice of one and the first of the next) are paired.
    The connected components of the graph of these pairs are the 3D components; those under `min_size` voxels in
    all are dropped and the others numbered 1..count in raster order of their first voxel, as `label_instances`
    numbers the components of the whole volume: the ids are the same. `blocks` is the second pass: it labels each
    block again and yields its labels with their 3D ids.

    Memory: one block of probability, its foreground and labels, one slice of labels kept from the block before, and
    a few numbers per block label; the probability is read twice.

    Attributes:
        count: the number of 3D instances (ids 1..count).
    """

    def __init__(
        self,
        probability: SliceVolume | np.ndarray,
        threshold: float = 0.5,
        min_size: int = 16,
        block_slices: int = BLOCK_SLICES,
    ) -> None:
        """Label and merge the blocks of the (Z, Y, X) `probability` (a volume file opened lazily, or an array)."""
        if isinstance(block_slices, bool) or not isinstance(block_slices, (int, np.integer)) or block_slices < 1:
            raise InputError(f"block_slices: {block_slices!r} slices per block; pass a whole number of at least 1")
        self._probability = probability
        self._threshold = threshold
        self._block_slices = int(block_slices)
        self._starts = range(0, probability.shape[0], self._block_slices)
        self._offsets: list[int] = []  # block label l (1..) of block k is graph node offsets[k] + l; node 0: background
        sizes = [np.zeros(1, np.int64)]
        pairs = []
        last_slice = None  # nodes of the last slice of the block before
        offset = 0
        for start in self._starts:
            labels, count = self._label(start)
            self._offsets.append(offset)
            sizes.append(_label_sizes(labels, count)[1:])
            first_slice = np.where(labels[0] > 0, labels[0] + offset, 0)
            if last_slice is not None:
                touching = (last_slice > 0) & (first_slice > 0)
                pairs.append(np.unique((last_slice[touching].astype(np.int64) << 32) | first_slice[touching]))
            last_slice = np.where(labels[-1] > 0, labels[-1] + offset, 0)
            offset += count
        node_sizes = np.concatenate(sizes)
        pair_keys = np.concatenate(pairs) if pairs else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(pair_keys.size, np.int8), (pair_keys >> 32, pair_keys & 0xFFFFFFFF)),
                           shape=(node_sizes.size, node_sizes.size))  # fmt: skip
        _, component = graph_components(graph, directed=False)
        # a component's first node is the block label of its first voxel: ordering by it is raster order
        first_node = np.full(component.max() + 1, node_sizes.size)
        np.minimum.at(first_node, component, np.arange(node_sizes.size))
        order = np.argsort(first_node)
        final = np.zeros(order.size, np.int32)
        final[order] = kept_ids(np.bincount(component, weights=node_sizes)[order], min_size)
        self._final = final[component]  # the 3D instance id of every node (0: dropped or background)
        self.count = int(self._final.max(initial=0))

    def _label(self, start: int) -> tuple[np.ndarray, int]:
        """The labels (int32) of the block that starts at slice `start`, and their number."""
        foreground = _read_slices(self._probability, start, start + self._block_slices) >= self._threshold
        return connected_components(foreground, connectivity=1, return_num=True)

    def blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first slice, labels, ids) for every block in order: `ids[labels]` are its 3D instance ids."""
        for start, offset in zip(self._starts, self._offsets):
            labels, count = self._label(start)
            ids = self._final[offset : offset + count + 1].copy()
            ids[0] = 0
            yield start, labels, ids


def _label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels of each label 0..`count` of a (Z, Y, X) label block, counted a slice at a time (no copy of the block)."""
    return sum((np.bincount(plane.ravel(), minlength=count + 1) for plane in labels), np.zeros(count + 1, np.int64))


def instances_3d(
    probability: np.ndarray,
    density: np.ndarray | None = None,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 16,
    peak_min_distance: int = 7,
    peak_threshold: float = 2e-4,
    block_slices: int = BLOCK_SLICES,
) -> np.ndarray:
    """3D instance ids (int32) of a (Z, Y, X) prediction: 6-connected components (`BlockComponents`, labelled
    `block_slices` slices at a time), or watershed seeded at 3D density peaks (in memory)."""
    probability = np.asarray(probability)
    if probability.ndim != 3:
        raise InputError(f"probability: volume has shape {probability.shape}, not (Z, Y, X); pass a 3D probability volume")
    if density is not None and np.shape(density) != probability.shape:
        raise InputError(
            f"density: shape {np.shape(density)} differs from probability shape {probability.shape}; "
            "pass the density predicted with this probability"
        )
    _check_method(method)
    if method == "watershed" and density is None:
        raise InputError("density: the watershed method needs the density volume; pass density.tif or use 'components'")
    if method == "watershed":
        return label_instances(probability, density, threshold, method, min_size, peak_min_distance, peak_threshold)
    instances = np.zeros(probability.shape, np.int32)
    for start, labels, ids in BlockComponents(probability, threshold, min_size, block_slices).blocks():
        instances[start : start + len(labels)] = ids[labels]
    return instances


def _check_method(method: str) -> None:
    """Refuse (one-line InputError) an unknown 3D instance method."""
    if method not in ("components", "watershed"):
        raise InputError(f"method: unknown 3D instance method {method!r}; use 'components' or 'watershed'")


class InstanceTable:
    """Per-instance voxel count, bounding box and centroid of a 3D label volume, accumulated block by block.

    Each block adds the counts, bounding boxes and coordinate sums of its labels to running values per 3D id, so the
    table of a volume seen block by block equals that of the whole volume. Memory: a few numbers per id, and a slice
    of temporaries.

    Attributes:
        voxel_size: (z, y, x) nm of a voxel, or None when unknown (then no `volume_um3` column).
    """

    def __init__(self, count: int, voxel_size: tuple[float, float, float] | None = None) -> None:
        """Room for ids 1..`count`; `voxel_size` (z, y, x) nm adds the volume in µm³."""
        self.voxel_size = voxel_size
        self._voxels = np.zeros(count + 1, np.int64)
        self._low = np.full((count + 1, 3), np.iinfo(np.int64).max)
        self._high = np.zeros((count + 1, 3), np.int64)
        self._sums = np.zeros((count + 1, 3))

    def add(self, labels: np.ndarray, start: int, ids: np.ndarray) -> None:
        """Add a (Z, Y, X) block of `labels` whose first slice is slice `start` of the volume and whose 3D ids are
        `ids[labels]` (several labels may share an id; id 0 is not counted)."""
        count = ids.size - 1
        voxels = np.zeros(count + 1, np.int64)
        sums = np.zeros((count + 1, 3))
        rows, cols = np.indices(labels.shape[1:], dtype=np.float64)
        for z, plane in enumerate(labels, start=start):
            flat = plane.ravel()
            voxels_z = np.bincount(flat, minlength=count + 1)
            voxels += voxels_z
            sums[:, 0] += z * voxels_z
            sums[:, 1] += np.bincount(flat, weights=rows.ravel(), minlength=count + 1)
            sums[:, 2] += np.bincount(flat, weights=cols.ravel(), minlength=count + 1)
        boxes = ndi.find_objects(labels, max_label=count)
        present = np.array([label for label, box in enumerate(boxes, start=1) if box is not None and ids[label]], int)
        if present.size == 0:
            return
        bounds = np.array([[(axis.start, axis.stop) for axis in boxes[label - 1]] for label in present])
        bounds[:, 0] += start
        target = ids[present]
        np.add.at(self._voxels, target, voxels[present])
        np.add.at(self._sums, target, sums[present])
        np.minimum.at(self._low, target, bounds[:, :, 0])
        np.maximum.at(self._high, target, bounds[:, :, 1])

    def table(self) -> dict[str, np.ndarray]:
        """The columns (`TABLE_COLUMNS`, and `volume_um3` with a voxel size) of the ids present, in id order."""
        ids = np.flatnonzero(self._voxels)
        voxels = self._voxels[ids]
        centroids = self._sums[ids] / voxels[:, None]
        table = dict(zip(TABLE_COLUMNS, (ids, voxels, *self._low[ids].T, *self._high[ids].T, *centroids.T)))
        if self.voxel_size is not None:
            table[VOLUME_UM3] = voxels * float(np.prod(self.voxel_size)) * 1e-9
        return table


def instance_table(
    instances: np.ndarray, voxel_size: tuple[float, float, float] | None = None
) -> dict[str, np.ndarray]:
    """Per-instance id, volume (voxels; and µm³ as `volume_um3` with a `voxel_size` (z, y, x) nm), bbox (z0, y0, x0
    inclusive; z1, y1, x1 exclusive) and centroid of a 3D label volume."""
    if np.ndim(instances) != 3:
        raise InputError(f"instances: volume has shape {np.shape(instances)}, not (Z, Y, X); pass a 3D label volume")
    instances = np.asarray(instances)
    count = int(instances.max(initial=0))
    table = InstanceTable(count, voxel_size)
    table.add(instances, 0, np.arange(count + 1))
    return table.table()


def write_instance_table(path: str | os.PathLike, table: dict[str, np.ndarray]) -> Path:
    """Write an `instance_table` as CSV (integers as is, centroids with 3 decimals, µm³ with 6 significant digits),
    atomically."""
    path = Path(path)
    names = [*TABLE_COLUMNS, *([VOLUME_UM3] if VOLUME_UM3 in table else [])]
    formats = [int] * 8 + ["{:.3f}".format] * 3 + ["{:.6g}".format]
    with atomic_output(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(table[name].tolist() for name in names)):
            writer.writerow([write(value) for write, value in zip(formats, row)])
    return path


def _write_instances(
    prediction_dir: Path, shape: tuple[int, int, int], blocks: Iterable[tuple[int, np.ndarray, np.ndarray]],
    table: InstanceTable,
) -> None:
    """Write the (Z, Y, X) instance ids (uint32) of consecutive (first slice, labels, ids) blocks one slice at a time
    into the prediction folder's layout (`slice_writers`; in an OME-Zarr folder with its probability image's pixel
    size), adding each block to `table`."""
    with slice_writers(prediction_dir, shape, folder_pixel_size(prediction_dir), names=(LINKED,)) as (writer,):
        for start, labels, ids in blocks:
            table.add(labels, start, ids)
            ids = ids.astype(np.uint32)
            for z, plane in enumerate(labels, start):
                writer.write(z, ids[plane])


def _memory_limit_bytes(memory_limit_gb: float | None) -> float:
    """`memory_limit_gb` in bytes; None: this machine's physical memory."""
    if memory_limit_gb is not None:
        return float(memory_limit_gb) * 1e9
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_z_spacing(z_spacing: float | None) -> None:
    """A z spacing is None (unknown) or a positive, finite number of nm; anything else is a one-line InputError.
    configs/inference.yaml calls it before the 2D pass, so a bad value stops the run before anything is written."""
    if z_spacing is not None and (isinstance(z_spacing, bool) or not isinstance(z_spacing, (int, float))
                                  or not math.isfinite(z_spacing) or z_spacing <= 0):  # fmt: skip
        raise input_error("--z_spacing", f"{z_spacing!r} is not a distance", "pass the nm between slices, e.g. 40")


def write_instances_3d(
    prediction_dir: str | os.PathLike,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 16,
    peak_min_distance: int = 7,
    peak_threshold: float = 2e-4,
    block_slices: int = BLOCK_SLICES,
    pixel_size: tuple[float, float] | None = None,
    z_spacing: float | None = None,
    memory_limit_gb: float | None = None,
) -> dict[str, Path]:
    """Read the probability (and density) of a prediction folder, write instances_3d (.tif, or an OME-Zarr image in
    an OME-Zarr folder) and instances_3d.csv there.

    Args:
        prediction_dir: the --output_dir of configs/inference.yaml.
        method, threshold, min_size, peak_min_distance, peak_threshold: as `instances_3d`.
        block_slices: slices labelled at a time by the components method (`BYTES_PER_BLOCK_VOXEL` per voxel).
        pixel_size: (y, x) nm of the prediction's pixels, if known.
        z_spacing: nm between its consecutive slices, if known; with `pixel_size`, the table gets `volume_um3`.
        memory_limit_gb: the watershed method, which holds the whole volume, is refused when it would need more
            (`WATERSHED_BYTES_PER_VOXEL`); None: this machine's physical memory.
    """
    prediction_dir = Path(prediction_dir)
    if prediction_dir.exists() and not prediction_dir.is_dir():
        raise InputError(f"{prediction_dir}: prediction_dir is a file; pass the prediction folder (the --output_dir of configs/inference.yaml)")
    if not prediction_dir.is_dir():
        raise InputError(f"{prediction_dir}: prediction folder not found; pass the --output_dir of configs/inference.yaml")
    _check_method(method)
    check_z_spacing(z_spacing)
    voxel_size = (float(z_spacing), *map(float, pixel_size)) if pixel_size and z_spacing else None
    if voxel_size is None:
        unknown = [flag for flag, value in (("--pixel_size", pixel_size), ("--z_spacing", z_spacing)) if not value]
        what = " and ".join(flag[2:].replace("_", " ") for flag in unknown)
        logger.info(f"instances_3d.csv: volumes in voxels only ({what} unknown: pass {' and '.join(unknown)} for "
                    f"volume_um3, or predict an input whose metadata states {'them' if len(unknown) > 1 else 'it'})")
    volume_path = prediction_path(prediction_dir, LINKED)
    finals = {volume_path.name: volume_path, LINKED_TABLE: prediction_dir / LINKED_TABLE}
    with open_prediction(prediction_dir, "probability") as probability:
        if method == "components":
            components = BlockComponents(probability, threshold, min_size, block_slices)
            count, blocks = components.count, components.blocks()
        else:
            with open_prediction(prediction_dir, "density") as density:
                need = WATERSHED_BYTES_PER_VOXEL * float(np.prod(probability.shape))
                limit = _memory_limit_bytes(memory_limit_gb)
                if need > limit:
                    raise input_error(prediction_dir, f"the watershed of {probability.shape} voxels holds them all "
                                      f"in memory, ~{need / 1e9:.3g} GB, over the limit of {limit / 1e9:.3g} GB",
                                      "use --instance_method components (bounded memory) or fewer slices")  # fmt: skip
                instances = label_instances(_read_slices(probability, 0, len(probability)),
                                            _read_slices(density, 0, len(density)), threshold, method, min_size,
                                            peak_min_distance, peak_threshold)  # fmt: skip
            count = int(instances.max(initial=0))
            blocks = [(0, instances, np.arange(count + 1, dtype=np.int32))]  # in memory already: one block
        table = InstanceTable(count, voxel_size)
        _write_instances(prediction_dir, probability.shape, blocks, table)
    write_instance_table(finals[LINKED_TABLE], table.table())
    return finals
