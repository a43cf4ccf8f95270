"""Throughput and memory of blockwise prediction: one process against a LocalCluster of N workers on the same cores.

    python scripts/bench_blockwise.py [--slices 32] [--size 1024] [--workers 1 2] [--block_slices 4]
        [--without_single] [--checkpoint models/model.pt] [--output_dir runs/bench_blockwise]

Writes a (slices, size, size) uint8 zarr volume of EPFL slice 120 tiled (`bundle.speed.make_slice`, each slice
rolled so that no two are alike), then, for each N of --workers, runs as a user runs it (`python -m monai.bundle
run`): configs/inference.yaml with N torch threads into OUT/single_N.ome.zarr, and configs/inference_cluster.yaml
with `--workers N` (one thread each) into OUT/workers_N.ome.zarr. Prints the wall times, their ratio (cluster /
one process; the issue's target is <= 1.15), the peak RSS of the single process and of each worker (the run's own
log line), and whether the cluster's output equals the single process's. --without_single runs only the cluster
(memory at a size whose single-process figure is already known). The wall times include starting the cluster
(worker processes importing torch, about 10 s): give it enough slices.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402

from bundle.speed import make_slice  # noqa: E402
from benchmark import run_command  # noqa: E402
from bundle.errors import OneLineParser  # noqa: E402

CONFIGS = "['configs/inference.yaml','configs/inference_cluster.yaml']"


def write_volume(path: Path, slices: int, size: int) -> str:
    """A (slices, size, size) uint8 zarr array at `path`, one chunk per slice; returns what the slices show."""
    import zarr

    image, source = make_slice(size)
    array = zarr.create_array(str(path), shape=(slices, size, size), dtype=np.uint8, chunks=(1, size, size))
    for z in range(slices):
        array[z] = np.roll(image, (37 * z, 53 * z), axis=(0, 1))
    return source


def timed_run(arguments: list[str], threads: int, log: Path) -> tuple[float, int, list[float]]:
    """`python -m monai.bundle run ARGUMENTS` from the repository with `threads` OpenMP threads per process:
    (wall seconds, peak RSS bytes of its largest process, peak GB of each worker as the run logs them)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    code, peak = run_command([sys.executable, "-m", "monai.bundle", "run", *arguments], log)
    wall = time.perf_counter() - start
    text = log.read_text()
    if code != 0:
        sys.exit(f"bench_blockwise: {' '.join(arguments[:2])} failed (exit {code}); its output: {log}")
    workers = re.findall(r"peak memory of each worker: (.*)", text)
    return wall, peak, [float(gb) for gb in re.findall(r"([0-9.]+) GB", workers[-1])] if workers else []


def main() -> None:
    """For each worker count: one process, then the cluster; print one line each."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block_slices", type=int, default=4)
    parser.add_argument("--without_single", action="store_true")
    parser.add_argument("--checkpoint", default="models/model.pt")
    parser.add_argument("--output_dir", type=Path, default=REPO / "runs" / "bench_blockwise")
    args = parser.parse_args()
    from bundle.inference.prediction_folder import read_prediction

    out = args.output_dir.absolute()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    source = write_volume(out / "volume.zarr", args.slices, args.size)
    common = ["--input_image", str(out / "volume.zarr"), "--checkpoint", args.checkpoint,
              "--device", "$torch.device('cpu')"]  # fmt: skip
    print(f"{args.slices} slices of {args.size}² ({source}), {args.block_slices} per block, CPU", flush=True)
    for workers in args.workers:
        single = out / f"single_{workers}.ome.zarr"
        if not args.without_single:
            wall, peak, _ = timed_run(["--config_file", "configs/inference.yaml", *common, "--output_dir",
                                       str(single)], workers, out / f"single_{workers}.log")  # fmt: skip
            print(f"one process, {workers} thread{'s' if workers > 1 else ' '}: {wall:7.1f} s  "
                  f"{args.slices / wall:6.3f} slices/s  peak RSS {peak / 1e9:.2f} GB", flush=True)  # fmt: skip
        folder = out / f"workers_{workers}.ome.zarr"
        cluster, peak, each = timed_run(["--config_file", CONFIGS, *common, "--output_dir", str(folder), "--workers",
                                         str(workers), "--block_slices", str(args.block_slices)], 1,
                                        out / f"workers_{workers}.log")  # fmt: skip
        line = (f"{workers} worker{'s' if workers > 1 else ' '}, 1 thread each: {cluster:7.1f} s  "
                f"{args.slices / cluster:6.3f} slices/s  peak RSS of each worker "
                f"{' / '.join(f'{gb:.2f}' for gb in each)} GB (largest process {peak / 1e9:.2f} GB)")  # fmt: skip
        if not args.without_single:
            same = np.allclose(read_prediction(folder, "probability"), read_prediction(single, "probability"),
                               atol=1e-5) and np.array_equal(read_prediction(folder, "instances"),
                                                             read_prediction(single, "instances"))  # fmt: skip
            line += f"  cluster / one process {cluster / wall:.2f}  {'same output' if same else 'OUTPUT DIFFERS'}"
            shutil.rmtree(single)  # the disk a 128 x 4096² volume needs: the outputs of one run at a time
        disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{line}  output {disk / 1e9:.1f} GB on disk", flush=True)
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
