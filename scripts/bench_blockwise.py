"""Throughput of blockwise prediction: one process against a LocalCluster of N workers, on a synthetic zarr volume.

    python scripts/bench_blockwise.py [--slices 32] [--size 1024] [--workers 1 2] [--block_slices 4]
        [--checkpoint models/model.pt] [--output_dir runs/bench_blockwise]

Writes a (slices, size, size) uint8 zarr volume of EPFL slice 120 tiled (`bench_inference.make_slice`, each slice
rolled so that no two are alike), then runs, each as a user runs it (`python -m monai.bundle run`, one torch
thread per process): configs/inference.yaml into OUT/single.ome.zarr, and configs/inference_cluster.yaml with
`--workers N` into OUT/workers_N.ome.zarr for each N. Prints the wall time, slices per second and the speed-up
against one process, and checks that every blockwise output equals the single-process one. The wall time
includes the start of the cluster (worker processes importing torch, seconds): give it enough slices.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402

from bench_inference import make_slice  # noqa: E402
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


def timed_run(arguments: list[str]) -> float:
    """Wall seconds of `python -m monai.bundle run ARGUMENTS` from the repository (one torch thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *arguments], cwd=REPO, env=env,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"bench_blockwise: {' '.join(arguments[:2])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    """Time one process and each worker count; print one line each."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block_slices", type=int, default=4)
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
    single = timed_run(["--config_file", "configs/inference.yaml", *common, "--output_dir",
                        str(out / "single.ome.zarr")])  # fmt: skip
    print(f"{args.slices} slices of {args.size}² ({source}), {args.block_slices} per block, CPU, one torch thread "
          "per process")  # fmt: skip
    print(f"one process: {single:7.1f} s  {args.slices / single:6.2f} slices/s")
    expected = {name: read_prediction(out / "single.ome.zarr", name) for name in ("probability", "instances")}
    for workers in args.workers:
        folder = out / f"workers_{workers}.ome.zarr"
        wall = timed_run(["--config_file", CONFIGS, *common, "--output_dir", str(folder), "--workers", str(workers),
                          "--block_slices", str(args.block_slices)])  # fmt: skip
        same = np.allclose(read_prediction(folder, "probability"), expected["probability"], atol=1e-5)
        same = same and np.array_equal(read_prediction(folder, "instances"), expected["instances"])
        print(f"{workers} worker{'s' if workers > 1 else ' '}:   {wall:7.1f} s  {args.slices / wall:6.2f} slices/s  "
              f"x{single / wall:.2f}  {'same output' if same else 'OUTPUT DIFFERS from one process'}")  # fmt: skip


if __name__ == "__main__":
    main()
