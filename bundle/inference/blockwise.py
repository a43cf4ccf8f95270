"""Blockwise prediction on Dask: the workers of a cluster predict blocks of whole slices into an OME-Zarr
prediction folder, and a killed run goes on from its last finished block when the same command runs again.

The client (`BlockwisePredictor`) checks the input and the output folder as `VolumePredictor` does, creates the
three OME-Zarr images (chunks of one slice) and sends one task per block of `block_slices` slices. A
task (`predict_block`) opens the input itself, reads, normalises and predicts its slices one at a time with the
worker's network (`PredictorPlugin`: loaded once per worker, weights-only), writes its own chunks and then records
the block: OUT.ome.zarr/.blocks/done/FIRST-LAST.json, written atomically, so that a block is recorded only when all
its chunks are written. Memory per worker is one slice and the network, whatever the volume size.

Instance ids are unique across the volume, as in `VolumePredictor`: a block writes the ids of each slice from 1
into .blocks/slice_instances, and when every block is recorded the ids are numbered on (`number_block`: each slice
offset by the largest ids of the slices before it) into the instances image. The numbering reads the per-slice ids
and overwrites the final ones, so a killed numbering is simply done again. .blocks/run.json states what is being
predicted (input, slices, blocks, checkpoint, inferer, post-processing, scale); a rerun with the same statement
resumes, any other starts over. `.blocks` is removed when the prediction is complete; until then the folder is
refused as a prediction (`bundle.inference.prediction_folder.require_predictions`).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distributed import WorkerPlugin, get_worker
from monai.inferers import Inferer
from tqdm import tqdm

from bundle.data.dataset import normalize_slice
from bundle.data.io import SliceVolume, is_zarr_path, parse_slices
from bundle.data.readers import PixelSize
from bundle.data.readers.zarr import LEVEL_0, create_ome_zarr, slice_chunks
from bundle.errors import input_error
from bundle.inference.postprocess import instances_from_prediction
from bundle.inference.predict import VolumePredictor, open_input
from bundle.inference.prediction_folder import (
    DTYPES,
    PREDICTIONS,
    UNFINISHED,
    check_prediction_dir,
    claim_prediction_dir,
    prediction_path,
)
from bundle.inference.runtime import resolve_runtime
from bundle.networks import load_checkpoint
from bundle.networks.checkpoint import checkpoint_sha256
from bundle.outputs import atomic_output
from bundle.speed import peak_rss_bytes
from bundle.threads import available_cores

PLUGIN = "mitoda-predictor"  # the worker plugin's name
RUN_FILE = "run.json"  # in .blocks: what the unfinished run predicts
DONE = "done"  # in .blocks: one record per finished block
SLICE_INSTANCES = "slice_instances"  # in .blocks: the instance ids of each slice from 1, before the numbering
CONNECT_TIMEOUT_S = 30  # how long --scheduler ADDRESS may take to answer
# Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand every large tensor's memory
# back to the system and fault it in again: the network then runs at half speed (4.0 s against 8.2 s per 1024² slice,
# one thread). The LocalCluster's workers keep glibc's default; README.md (Large volumes) says how to do so on a cluster.
TRIM_SETTING = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
logger = logging.getLogger("mitoda.blockwise")


@dataclass(frozen=True)
class Block:
    """The slices one task predicts: output slices `first` to `first + len(z) - 1`, input slices `z`."""

    first: int
    z: tuple[int, ...]

    @property
    def name(self) -> str:
        """FIRST-LAST, the output slices; the name of the block's record."""
        return f"{self.first}-{self.first + len(self.z) - 1}"


def split_blocks(indices: Sequence[int], block_slices: int) -> list[Block]:
    """The input slices `indices` (in output order) as blocks of `block_slices` slices (the last may be shorter)."""
    return [Block(i, tuple(indices[i : i + block_slices])) for i in range(0, len(indices), block_slices)]


def _open_array(path: Path, mode: str = "r+") -> Any:
    """The zarr array at `path`, or the level 0 of the OME-Zarr image there (as `create_ome_zarr` makes it)."""
    import zarr

    return zarr.open_array(str(path / LEVEL_0 if (path / LEVEL_0).is_dir() else path), mode=mode)


class PredictorPlugin(WorkerPlugin):
    """Builds, once per Dask worker, the `VolumePredictor` that its tasks share: the network with the checkpoint's
    weights (read weights-only from `checkpoint`, a path every worker can read), on `device`, with torch using the
    worker's threads. Tasks predict one block at a time per worker (`lock`), so that a worker of many threads holds
    one slice, not one per thread.

    Args:
        network: the network (a CPU copy is sent), whose weights each worker loads from `checkpoint` again.
        checkpoint: the model.pt to load.
        inferer, postprocessing, device, scale, runtime: as `VolumePredictor`'s.
    """

    name = PLUGIN

    def __init__(self, network: torch.nn.Module, checkpoint: str | os.PathLike, inferer: Inferer,
                 postprocessing: Callable[..., np.ndarray], device: str, scale: Sequence[float],
                 runtime: str = "eager") -> None:  # fmt: skip
        self.network = copy.deepcopy(network).cpu()  # a worker may have no GPU
        self.checkpoint = os.fspath(checkpoint)
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = device
        self.scale = tuple(scale)
        self.runtime = runtime
        self.predictor: VolumePredictor | None = None
        self.lock: threading.Lock | None = None

    def setup(self, worker: Any) -> None:
        """Load the network on this worker and set torch's threads (and OpenVINO's) to the worker's."""
        torch.set_num_threads(max(1, int(worker.state.nthreads)))
        network = load_checkpoint(self.network, self.checkpoint).to(self.device)
        self.predictor = VolumePredictor(network, self.inferer, self.postprocessing, self.device, progress=False,
                                         scale=self.scale, runtime=self.runtime)  # fmt: skip
        self.lock = threading.Lock()


def predict_block(input_image: str, output_dir: str, block: Block) -> list[int]:
    """A Dask task: predict the slices of `block` with this worker's predictor, write their chunks, then record the
    block (per-slice largest instance id); return those ids."""
    plugin = get_worker().plugins[PLUGIN]
    output_dir = Path(output_dir)
    images = [_open_array(prediction_path(output_dir, name)) for name in ("probability", "density")]
    slice_instances = _open_array(output_dir / UNFINISHED / SLICE_INSTANCES)
    largest = []
    with plugin.lock, SliceVolume(input_image) as volume:
        for i, z in enumerate(block.z, start=block.first):
            probability, density, instances = plugin.predictor.predict_image(normalize_slice(volume[z], volume.path, z))
            images[0][i], images[1][i] = probability, density
            slice_instances[i] = instances.astype(np.uint32, copy=False)
            largest.append(int(instances.max()))
    with atomic_output(output_dir / UNFINISHED / DONE / f"{block.name}.json") as partial:
        partial.write_text(json.dumps({"largest_id": largest}))
    return largest


def number_block(output_dir: str, block: Block, offsets: Sequence[int]) -> None:
    """A Dask task: the instance ids of `block`'s slices, numbered on from `offsets` (one per slice), into the
    instances image (read from the per-slice ids, so doing it again gives the same)."""
    output_dir = Path(output_dir)
    slice_instances = _open_array(output_dir / UNFINISHED / SLICE_INSTANCES, mode="r")
    instances = _open_array(prediction_path(output_dir, "instances"))
    for i, offset in enumerate(offsets, start=block.first):
        ids = slice_instances[i]
        ids[ids > 0] += np.uint32(offset)
        instances[i] = ids


def warn_of_malloc_trim(client: Any) -> None:
    """Warn when workers of `client` run with MALLOC_TRIM_THRESHOLD_ set (see TRIM_SETTING)."""
    trimmed = sorted(worker for worker, value in client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").items()
                     if value is not None)  # fmt: skip
    if trimmed:
        logger.warning(f"{len(trimmed)} Dask workers run with MALLOC_TRIM_THRESHOLD_ set (the nanny's default), "
                       "which halves the network's speed: start them with the Dask setting "
                       f"{TRIM_SETTING}: null (README.md, Large volumes)")


def _settings(value: Any) -> Any:
    """A JSON description of a setting for run.json: numbers, strings and lists as they are; a partial as its
    function and arguments; another object as its class and its plain attributes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_settings(v) for v in value]
    if isinstance(value, functools.partial):
        return {"function": f"{value.func.__module__}.{value.func.__qualname__}",
                **{k: _settings(v) for k, v in sorted(value.keywords.items())}}  # fmt: skip
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    plain = {k: _settings(v) for k, v in sorted(vars(value).items()) if not k.startswith("_")
             and isinstance(v, (type(None), bool, int, float, str, list, tuple))}  # fmt: skip
    return {"class": f"{type(value).__module__}.{type(value).__qualname__}", **plain}


class BlockwisePredictor:
    """Predict a (Z, Y, X) volume blockwise on a Dask cluster into an OME-Zarr prediction folder, resumably: the
    outputs of `VolumePredictor` (the same probability, density and instance ids), written by many workers at once.

    Args:
        network: the network with the weights of `checkpoint` (configs/inference.yaml's `network`).
        checkpoint: the model.pt that every worker loads into its copy of `network`, weights-only (a path the
            workers can read).
        inferer: the sliding-window inferer of one slice.
        postprocessing: (probability, density) -> instance ids of one slice, from 1.
        device: where the workers run the network.
        scale: (y, x) factors from the input's pixels to the model's.
        pixel_size: (y, x) nm per pixel of the input, written into the OME-Zarr metadata when known.
        scheduler: address of a running Dask scheduler (`tcp://HOST:8786`); None: a LocalCluster on this machine.
        workers: the LocalCluster's workers, one thread each (None: one per core this process may use, `available_cores`); unused with `scheduler`.
        block_slices: slices per block (one task).
        processes: LocalCluster workers as processes (True) or as threads of this process.
        progress: show a progress bar of the blocks.
        runtime: where each worker runs the network, as `VolumePredictor`'s.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoint: str | os.PathLike,
        inferer: Inferer,
        postprocessing: Callable[..., np.ndarray] = instances_from_prediction,
        device: str | torch.device = "cpu",
        scale: Sequence[float] = (1.0, 1.0),
        pixel_size: PixelSize | None = None,
        scheduler: str | None = None,
        workers: int | None = None,
        block_slices: int = 4,
        processes: bool = True,
        progress: bool = True,
        runtime: str = "eager",
    ) -> None:
        resolve_runtime(runtime, device)  # an unknown or impossible runtime: before a cluster starts
        for key, value in (("block_slices", block_slices), ("workers", workers)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise input_error(key, f"{value!r} is not a positive number", f"pass e.g. --{key} 4")
        if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
            raise input_error("scheduler", f"{scheduler!r} is not a scheduler address",
                              "pass e.g. --scheduler tcp://HOST:8786, or leave it out for a LocalCluster")  # fmt: skip
        self.network = network
        self.checkpoint = Path(os.fspath(checkpoint)).expanduser().absolute()
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = str(torch.device(device))
        self.scale = (float(scale[0]), float(scale[-1]))
        self.pixel_size = pixel_size
        self.scheduler = scheduler
        self.workers = workers or available_cores()
        self.block_slices = block_slices
        self.processes = processes
        self.progress = progress
        self.runtime = runtime

    def __call__(self, input_image: str | os.PathLike, output_dir: str | os.PathLike,
                 slices: str | Sequence[int] | None = None) -> dict[str, Path]:  # fmt: skip
        """Predict `input_image` (optionally only `slices`) into the OME-Zarr folder `output_dir`, going on from the
        blocks an earlier run of the same prediction finished. Returns the three images by name."""
        output_dir = check_prediction_dir(output_dir)
        if not is_zarr_path(output_dir):
            raise input_error(output_dir, "blockwise prediction writes OME-Zarr images, which many workers can "
                              "write at once (a TIFF file cannot)", "name the output folder .ome.zarr, e.g. "
                              f"--output_dir {output_dir.name}.ome.zarr")  # fmt: skip
        with open_input(input_image) as volume:
            indices = parse_slices(slices, len(volume), path=str(input_image))
            normalize_slice(volume[indices[0]], volume.path, indices[0])  # a blank or NaN image writes nothing
            source, run = volume.path.absolute(), self._run(volume, indices)
            shape = (len(indices), *volume.shape[1:])
        with self._client() as client:  # an unreachable scheduler: before anything is written
            output_dir = claim_prediction_dir(output_dir, resume=True)
            blocks = split_blocks(indices, self.block_slices)
            done = self._start(output_dir, run, shape)
            todo = [block for block in blocks if block.name not in done]
            client.register_plugin(PredictorPlugin(self.network, self.checkpoint, self.inferer,
                                                   self.postprocessing, self.device, self.scale, self.runtime))  # fmt: skip
            futures = client.map(functools.partial(predict_block, str(source), str(output_dir)), todo, pure=False)
            self._wait(client, futures, total=len(blocks), name=source.name)
            largest = [n for block in blocks for n in self._record(output_dir, block)]
            offsets = np.cumsum([0, *largest])  # of each slice: the largest ids of the slices before it, summed
            slice_offsets = [offsets[block.first : block.first + len(block.z)].tolist() for block in blocks]
            self._wait(client, client.map(functools.partial(number_block, str(output_dir)), blocks, slice_offsets,
                                          pure=False))  # fmt: skip
            peaks = sorted(client.run(peak_rss_bytes).values(), reverse=True)
            logger.info(f"peak memory of each worker: {', '.join(f'{peak / 1e9:.2f} GB' for peak in peaks)}")
        finished = output_dir / f"{UNFINISHED}.{uuid.uuid4().hex[:12]}.tmp"
        os.replace(output_dir / UNFINISHED, finished)  # the prediction is complete from here on
        shutil.rmtree(finished)
        return {name: prediction_path(output_dir, name) for name in PREDICTIONS}

    def _run(self, volume: SliceVolume, indices: list[int]) -> dict:
        """What this run predicts, as .blocks/run.json states it (JSON types): a rerun resumes only the same
        prediction."""
        run = {"input": str(volume.path.absolute()), "shape": list(volume.shape), "dtype": str(volume.dtype),
               "slices": indices, "block_slices": self.block_slices, "checkpoint": str(self.checkpoint),
               "checkpoint_sha256": checkpoint_sha256(self.checkpoint), "scale": list(self.scale),
               "pixel_size": _settings(self.pixel_size), "inferer": _settings(self.inferer),
               "postprocessing": _settings(self.postprocessing),
               "runtime": resolve_runtime(self.runtime, self.device)}  # fmt: skip
        return json.loads(json.dumps(run))

    def _start(self, output_dir: Path, run: dict, shape: tuple[int, int, int]) -> set[str]:
        """The names of the blocks an unfinished earlier run of `run` recorded; else (nothing to resume) new empty
        images and an empty .blocks with run.json, written last."""
        import zarr

        blocks = output_dir / UNFINISHED
        if (blocks / RUN_FILE).is_file() and json.loads((blocks / RUN_FILE).read_text()) == run:
            done = {path.stem for path in (blocks / DONE).glob("*.json")}
            logger.info(f"{output_dir}: resuming an unfinished run, {len(done)} blocks already done")
            return done
        if blocks.exists():
            logger.warning(f"{blocks}: an unfinished run of another prediction, removed; starting over")
            shutil.rmtree(blocks)
        (blocks / DONE).mkdir(parents=True)
        for name in PREDICTIONS:
            create_ome_zarr(prediction_path(output_dir, name), shape, DTYPES[name], pixel_size=self.pixel_size)
        zarr.create_array(str(blocks / SLICE_INSTANCES), shape=shape, dtype=np.uint32, chunks=slice_chunks(shape),
                          zarr_format=2)  # a plain array: .blocks is no zarr group  # fmt: skip
        with atomic_output(blocks / RUN_FILE) as partial:
            partial.write_text(json.dumps(run, indent=1))
        return set()

    @staticmethod
    def _record(output_dir: Path, block: Block) -> list[int]:
        """The per-slice largest instance ids a finished block recorded."""
        return json.loads((output_dir / UNFINISHED / DONE / f"{block.name}.json").read_text())["largest_id"]

    def _wait(self, client: Any, futures: list, total: int | None = None, name: str = "") -> None:
        """Wait for `futures` (a progress bar of `total` blocks when given); the first failure cancels the rest and
        is raised."""
        from distributed import as_completed

        bar = tqdm(total=total, initial=total - len(futures) if total else 0, desc=f"predict {name}", unit="block",
                   disable=not self.progress or total is None)  # fmt: skip
        try:
            for future in as_completed(futures):
                future.result()
                bar.update()
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            bar.close()

    @contextmanager
    def _client(self) -> Iterator[Any]:
        """A Dask client of the scheduler at `scheduler`, or of a LocalCluster of `workers` one-thread workers."""
        import dask
        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.WARNING)  # not a line per worker, connection and plugin
        if self.scheduler is None:
            with dask.config.set({TRIM_SETTING: None}), LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=self.processes, dashboard_address=None
            ) as cluster, Client(cluster) as client:  # fmt: skip
                warn_of_malloc_trim(client)
                yield client
            return
        try:
            client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, ValueError, TypeError) as exc:
            raise input_error(self.scheduler, f"no Dask scheduler answers there ({type(exc).__name__})",
                              "start one (dask scheduler, or dask-jobqueue on SLURM) and pass its address, or "
                              "leave out --scheduler for a LocalCluster") from exc  # fmt: skip
        with client:
            try:  # the scheduler unpickles the tasks and the workers run them: both import this module
                client.run_on_scheduler(exec, f"import {__name__}")
                client.run(exec, f"import {__name__}")
            except ImportError as exc:
                raise input_error(self.scheduler, f"the cluster cannot import {__name__} ({exc})",
                                  "start its scheduler and workers with PYTHONPATH=REPO in this repository's "
                                  ".venv (README.md)") from exc  # fmt: skip
            warn_of_malloc_trim(client)
            yield client
