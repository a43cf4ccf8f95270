"""Zarr (v2 and v3) arrays and groups, and OME-Zarr images: read chunk by chunk; OME-Zarr v0.4 images written.

A zarr folder is read as the one array it is or holds; `key` names the array in a group of several, as it names an
HDF5 dataset. An OME-Zarr image (a group whose attributes have `multiscales`: v0.4 `.zattrs`, v0.5 `zarr.json`
attributes["ome"]) is read at level 0, `multiscales[0].datasets[0]` (`key` may name another level), with its pixel
size and z spacing from that level's scale and the axes' units. N5 is refused: zarr 3 reads no N5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.readers.base import OpenArray, PixelSize, VolumeReader, error, listing, nm_per_unit, unreadable
from bundle.outputs import atomic_output

METADATA_FILES = ("zarr.json", ".zarray", ".zgroup")  # one of them marks a zarr v3 node, a v2 array or a v2 group
LEGACY_AXES = ("t", "c", "z", "y", "x")  # OME-Zarr v0.1/v0.2 images have no `axes`: 5D, in this order
OME_VERSION = "0.4"  # what `write_ome_zarr` writes (zarr v2, readable by every OME-Zarr viewer today)
LEVEL_0 = "0"  # the path of the one level `create_ome_zarr` writes
AXES_FIX = "write one channel of one time point as a (z, y, x) image (leading c or t axes of size 1 are read)"


@dataclass
class ZarrVolume:
    """The array a zarr path resolves to, what to call it in messages and the voxel size its metadata states.

    Attributes:
        array: the array (an OME-Zarr image's level, its leading c or t axes of size 1 dropped), read lazily.
        what: what to call it in messages.
        spacing: nm per pixel along each of its axes z, y, x whose scale and unit the metadata states.
    """

    array: Any
    what: str
    spacing: dict[str, float] = field(default_factory=dict)

    @property
    def pixel_size(self) -> PixelSize | None:
        """(y, x) nm, or None when the metadata does not state both."""
        return (self.spacing["y"], self.spacing["x"]) if "y" in self.spacing and "x" in self.spacing else None


class LeadingAxesDropped:
    """An array with `n` leading axes of size 1 (an OME-Zarr image's c or t) indexed as if they were not there."""

    def __init__(self, array: Any, n: int) -> None:
        """Wrap `array`, dropping its first `n` axes."""
        self._array = array
        self._lead = (0,) * n
        self.shape = tuple(array.shape)[n:]
        self.dtype = array.dtype

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` (one slice per remaining axis)."""
        return self._array[(*self._lead, *index)]


def multiscales(node: Any) -> list | None:
    """The `multiscales` list of an OME-Zarr image group (v0.4 attributes or v0.5 attributes["ome"]), else None."""
    import zarr

    if not isinstance(node, zarr.Group):
        return None
    attrs = node.attrs.asdict()
    found = attrs.get("ome", attrs).get("multiscales")
    return found if isinstance(found, list) else None


def _volume_names(group: Any, prefix: str = "") -> list[str]:
    """Paths of the arrays and OME-Zarr images in a group, at any depth (not inside an image)."""
    import zarr

    names = []
    for name, member in sorted(group.members(), key=lambda item: item[0]):
        if isinstance(member, zarr.Array) or multiscales(member) is not None:
            names.append(prefix + name)
        else:
            names.extend(_volume_names(member, f"{prefix}{name}/"))
    return names


def _axis_names(path: Path, image: dict, ndim: int) -> list[str]:
    """The image's axis names (v0.3 strings or v0.4+ dicts); v0.1/v0.2 images have none: (t, c, z, y, x) or their
    last `ndim`."""
    axes = image.get("axes", LEGACY_AXES[-ndim:])
    names = [str(a.get("name", "?") if isinstance(a, dict) else a).lower() for a in axes]
    if len(names) != ndim:
        problem = f"OME-Zarr image names {len(names)} axes ({', '.join(names)}) but level 0 has {ndim}"
        raise error(path, problem, AXES_FIX)
    return names


def _leading_axes(path: Path, names: list[str], shape: tuple[int, ...]) -> int:
    """How many leading axes (c or t, of size 1) come before (z, y, x) or (y, x); other layouts are an InputError."""
    spatial = 3 if names[-3:] == ["z", "y", "x"] else 2
    lead = len(names) - spatial
    if names[-2:] != ["y", "x"] or any(n not in ("c", "t") or s != 1 for n, s in zip(names[:lead], shape)):
        axes = ", ".join(f"{n}={s}" for n, s in zip(names, shape))
        raise error(path, f"OME-Zarr image has axes ({axes}), not (z, y, x) or (y, x) of one grey channel", AXES_FIX)
    return lead


def _scale(transforms: Any) -> list[float] | None:
    """The scale of a list of coordinateTransformations (None when it has none, or not a list of numbers)."""
    scales = [t["scale"] for t in transforms or () if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t]
    try:
        return [float(v) for v in scales[0]] if scales else None
    except (TypeError, ValueError):
        return None


def _ome_spacing(image: dict, dataset: dict, names: list[str]) -> dict[str, float]:
    """nm per pixel of one level along each of its axes z, y, x that has a unit: its scale (times the image-wide
    scale, if any) in that axis's unit; {} when the scale is missing."""
    scale = _scale(dataset.get("coordinateTransformations"))
    overall = _scale(image.get("coordinateTransformations")) or [1.0] * len(names)
    units = [a.get("unit") if isinstance(a, dict) else None for a in image.get("axes", ())]
    if scale is None or not len(scale) == len(overall) == len(units) == len(names):
        return {}
    return {name: scale[i] * overall[i] * nm_per_unit(str(units[i]))
            for i, name in enumerate(names) if name in ("z", "y", "x") and units[i]}  # fmt: skip


def _ome_level(path: Path, group: Any, images: list, key: str | None) -> ZarrVolume:
    """Level 0 (or the level named `key`) of the first of an OME-Zarr group's multiscale `images`, checked as a
    (z, y, x) or (y, x) image."""
    image = images[0] if images and isinstance(images[0], dict) else {}
    datasets = [d for d in image.get("datasets") or () if isinstance(d, dict) and "path" in d]
    if not datasets:
        raise error(path, "OME-Zarr multiscales lists no datasets (no level 0)",
                    "write the image again with its levels in multiscales[0].datasets, e.g. with ome-zarr-py")  # fmt: skip
    levels = [str(d["path"]) for d in datasets]
    level = levels[0] if key is None else key.strip("/")
    if level not in levels:
        raise error(path, f"OME-Zarr image has no level '{key}'", f"use one of: {listing(levels)}")
    try:
        array = group[level]
    except KeyError:
        raise error(path, f"OME-Zarr level '{level}' is listed in multiscales but its array is missing",
                    "the image is incomplete: copy or write it again with all its levels") from None  # fmt: skip
    names = _axis_names(path, image, array.ndim)
    lead = _leading_axes(path, names, tuple(array.shape))
    spacing = _ome_spacing(image, datasets[levels.index(level)], names)
    return ZarrVolume(LeadingAxesDropped(array, lead) if lead else array, f"OME-Zarr level '{level}'", spacing)


def _resolve(path: Path, node: Any, key: str | None) -> ZarrVolume:
    """The volume a zarr node holds: an array, an OME-Zarr image's level, or the one (or `key`) of a group's."""
    import zarr

    if isinstance(node, zarr.Array):
        if key is not None:
            raise error(
                path, f"is one zarr array, with no array '{key}' inside", "leave out key: the array is the volume"
            )
        return ZarrVolume(node, f"zarr array '{node.path or '/'}'")
    images = multiscales(node)
    if images is not None:
        return _ome_level(path, node, images, key)
    names = _volume_names(node)
    if not names:
        raise error(path, "zarr group holds no array", "point to the zarr group or array that holds the volume")
    if key is None and len(names) > 1:
        raise error(path, f"zarr group holds {len(names)} arrays ({listing(names)})",
                    f"choose one with key=<name>, or pass its folder, e.g. {path / names[0]}")  # fmt: skip
    name = names[0] if key is None else key.strip("/")
    try:
        member = node[name]
    except KeyError:
        raise error(path, f"zarr group has no array '{key}'", f"use one of: {listing(names)}") from None
    return _resolve(path / name, member, None)


class ZarrReader(VolumeReader):
    """Zarr v2/v3 folders (`.zarr`, `.ome.zarr`, or any folder with zarr metadata): arrays, groups, OME-Zarr images."""

    kind = "zarr"
    suffixes = (".zarr", ".n5")

    def claims(self, path: Path) -> bool:
        """A folder named `.zarr` (or `.n5`, to refuse it by name), or one that holds zarr metadata."""
        if not path.is_dir():
            return False
        return path.name.lower().endswith(self.suffixes) or any((path / f).is_file() for f in METADATA_FILES)

    def volume(self, path: Path, key: str | None = None) -> ZarrVolume:
        """Resolve `path` (and `key`) to its array and voxel size; every problem is a one-line InputError."""
        import zarr

        if path.name.lower().endswith(".n5"):
            raise error(path, "N5 containers are not read (zarr 3 has no N5 support)",
                        "convert it to zarr or OME-Zarr, e.g. in Fiji: File > Save As > HDF5/N5/Zarr/OME-NGFF")  # fmt: skip
        if not any((path / f).is_file() for f in METADATA_FILES):
            raise error(path, "folder holds no zarr metadata (zarr.json, .zarray or .zgroup)",
                        "pass the zarr folder itself (the one with that file), or write the volume with zarr")  # fmt: skip
        try:
            node = zarr.open(store=str(path), mode="r")
        except Exception as exc:  # zarr raises many types for broken metadata
            raise unreadable(path, self.kind, exc) from exc
        return _resolve(path, node, key)

    def open(self, path: Path, key: str | None = None) -> OpenArray:
        """The array (nothing is read until it is indexed; zarr reads the chunks a block needs)."""
        found = self.volume(path, key)
        return OpenArray(found.array, found.what)

    def pixel_size(self, path: Path, key: str | None = None) -> PixelSize | None:
        """An OME-Zarr level's y and x scale in nm; plain zarr arrays state none."""
        return self.volume(path, key).pixel_size

    def z_spacing(self, path: Path, key: str | None = None) -> float | None:
        """An OME-Zarr level's z scale in nm; plain zarr arrays and 2D images state none."""
        return self.volume(path, key).spacing.get("z")


def slice_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of one whole slice of a (Z, Y, X) or 2D `shape`. Tiles of 1024² were tried for 4096² slices: each
    chunk's encoding then needs less transient memory, yet the peak RSS of each blockwise worker rose (2.04 to
    2.23 GB, 32 slices, 2 workers, docs/results.md), so the whole slice stays the chunk."""
    return (1,) * (len(shape) - 2) + tuple(int(n) for n in shape[-2:])


def create_ome_zarr(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    chunks: tuple[int, ...] | None = None,
    pixel_size: PixelSize | None = None,
    name: str | None = None,
    z_spacing: float | None = None,
) -> Any:
    """Create an empty OME-Zarr v0.4 image of a (Z, Y, X) (or 2D) `shape` at `path` and return its level-0 array
    (zarr v2, writable), for outputs written one block at a time; an image already at `path` is replaced.

    The folders above it, from the outermost one named `.zarr` down (`OUT.ome.zarr` for `OUT.ome.zarr/probability`),
    become zarr groups if they are not. `chunks` defaults to `slice_chunks(shape)` (one slice); `pixel_size` (y, x nm)
    and `z_spacing` (nm between slices of a 3D shape), when known, are the y and x axes' and the z axis's scale in
    nanometres (an unknown one: scale 1, no unit); `name` (default: the folder's name) is the image's name in its
    metadata.
    """
    import zarr

    if len(shape) not in (2, 3):
        raise ValueError(f"create_ome_zarr expects a 2D or (Z, Y, X) shape, got {shape}")
    final = Path(os.fspath(path)).expanduser()
    inside = False
    for folder in reversed(final.parents):  # every folder from the outermost `.zarr` down is a group
        inside = inside or folder.name.lower().endswith(".zarr")
        if inside and not any((folder / f).is_file() for f in METADATA_FILES):
            zarr.open_group(str(folder), mode="a", zarr_format=2)
    axes = [{"name": axis, "type": "space"} for axis in "zyx"[-len(shape) :]]
    scale = [1.0] * len(shape)
    known = {"z": z_spacing, **dict(zip("yx", pixel_size or (None, None)))}  # nm per pixel, None: unknown
    for i, axis in enumerate(axes):
        if known[axis["name"]] is not None:
            axis["unit"] = "nanometer"
            scale[i] = float(known[axis["name"]])
    level = {"path": LEVEL_0, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    image = {"version": OME_VERSION, "name": name or final.name, "axes": axes, "datasets": [level]}
    group = zarr.open_group(str(final), mode="w", zarr_format=2, attributes={"multiscales": [image]})
    chunks = chunks or slice_chunks(shape)
    return group.create_array(LEVEL_0, shape=tuple(shape), dtype=dtype, chunks=chunks)


def write_ome_zarr(path: str | os.PathLike, volume: np.ndarray, pixel_size: PixelSize | None = None,
                   z_spacing: float | None = None) -> None:  # fmt: skip
    """Write a (Z, Y, X) (or 2D) array as an OME-Zarr v0.4 image at `path`, level 0 only, one chunk per slice.

    The image is written beside `path` and renamed there when complete (`atomic_output`; an image already there is
    replaced); the folders above it, `pixel_size` and `z_spacing` are as in `create_ome_zarr`.
    """
    volume = np.asarray(volume)
    if volume.ndim not in (2, 3):
        raise ValueError(f"write_ome_zarr expects a 2D or (Z, Y, X) array, got shape {volume.shape}")
    if volume.dtype == np.bool_:
        volume = volume.astype(np.uint8)
    final = Path(os.fspath(path)).expanduser()
    with atomic_output(final) as tmp:
        create_ome_zarr(tmp, volume.shape, volume.dtype, pixel_size=pixel_size, name=final.name,
                        z_spacing=z_spacing)[...] = volume  # fmt: skip
