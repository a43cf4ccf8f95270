"""Time the slice prediction path against bare forward passes and measure peak memory, per slice size.

    python scripts/bench_inference.py [--checkpoint models/model.pt] [--sizes 1024 4096] [--repeats 3] [--threads 2]

For each size a fresh subprocess builds a size x size slice (EPFL slice 120 tiled, or synthetic blobs when the
data is absent) and reports, as the median over the repeats:
  full   ms per megapixel of VolumePredictor.predict_image after normalize_slice (normalise -> sliding window
         with Gaussian blending as configs/inference.yaml -> split -> instances), i.e. the per-slice path
         without TIFF reading/writing;
  no_pp  the same without the instance post-processing;
  bare   ms per megapixel of the network alone on as many 512^2 tiles (batch 1) as the sliding window runs;
  ratio  full / bare (target <= 1.25), and the peak resident memory of the subprocess (ru_maxrss; target < 2 GB
         for 4096^2 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPFL = REPO.parent / "shared" / "data" / "epfl_hippocampus" / "training.tif"


def make_slice(size: int):
    """A size x size uint8 EM-like slice: EPFL slice 120 tiled (mirrored), else smooth synthetic blobs."""
    import numpy as np

    if EPFL.is_file():
        import tifffile

        base = tifffile.imread(EPFL, key=120)
        reps = (-(-size // base.shape[0]), -(-size // base.shape[1]))
        return np.pad(base, ((0, base.shape[0] * (reps[0] - 1)), (0, base.shape[1] * (reps[1] - 1))), mode="symmetric")[:size, :size], "EPFL 120 tiled"
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    image = gaussian_filter(rng.random((size, size), dtype=np.float32), 6)
    image = (image - image.min()) / (np.ptp(image) + 1e-12) * 255
    return image.astype(np.uint8), "synthetic"


def tile_count(size: int, roi: tuple[int, int], overlap: float | tuple[float, float]) -> int:
    """Number of windows MONAI's sliding window runs on a size x size slice."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    overlap = tuple(overlap) if isinstance(overlap, (tuple, list)) else (overlap, overlap)
    interval = _get_scan_interval((size, size), roi, 2, overlap)
    return len(dense_patch_slices((size, size), roi, interval))


def child(size: int, checkpoint: str, repeats: int, threads: int) -> dict:
    """Measure one size in this process; return the numbers as a dict."""
    import os

    sys.path.insert(0, str(REPO))
    import torch
    from monai.bundle import ConfigParser

    from bundle.data.dataset import normalize_slice

    torch.set_num_threads(threads)
    os.chdir(REPO)
    parser = ConfigParser()
    parser.read_config("configs/inference.yaml")
    parser.update({"checkpoint": checkpoint, "device": "$torch.device('cpu')"})
    predictor = parser.get_parsed_content("predictor")
    inferer = predictor.inferer
    raw, source = make_slice(size)
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def timed(fn) -> float:
        fn()  # warm-up (weight map, allocator)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    full = timed(lambda: predictor.predict_image(normalize_slice(raw)))
    postprocessing, predictor.postprocessing = predictor.postprocessing, lambda probability, density: None
    no_pp = timed(lambda: predictor.predict_image(normalize_slice(raw)))
    predictor.postprocessing = postprocessing
    roi = tuple(inferer.roi_size)
    n_tiles = tile_count(size, roi, inferer.overlap)
    tile = torch.as_tensor(normalize_slice(raw[: roi[0], : roi[1]]))[None, None]

    @torch.no_grad()
    def bare() -> None:
        for _ in range(n_tiles):
            predictor.network(tile)

    bare_s = timed(bare)
    mpix = size * size / 1e6
    return {
        "size": size, "source": source, "tiles": n_tiles, "threads": threads, "repeats": repeats,
        "full_ms_per_mpix": 1e3 * full / mpix, "no_pp_ms_per_mpix": 1e3 * no_pp / mpix,
        "bare_ms_per_mpix": 1e3 * bare_s / mpix, "ratio": full / bare_s, "ratio_no_pp": no_pp / bare_s,
        "full_s": full, "bare_s": bare_s, "rss_ready_mb": rss_ready,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def main() -> None:
    """Run every size in its own subprocess (so the peak memory is per size) and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="models/model.pt")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint, args.repeats, args.threads)))
        return
    print(f"{'size':>6} {'tiles':>5} {'full ms/MP':>10} {'no-pp ms/MP':>11} {'bare ms/MP':>10} {'ratio':>6} {'ratio no-pp':>11} {'peak RSS':>9}  input", flush=True)
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size), "--checkpoint", args.checkpoint,
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"size {size} failed:\n{result.stderr[-3000:]}")
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{size:>5}² {r['tiles']:>5} {r['full_ms_per_mpix']:>10.0f} {r['no_pp_ms_per_mpix']:>11.0f} "
            f"{r['bare_ms_per_mpix']:>10.0f} {r['ratio']:>6.3f} {r['ratio_no_pp']:>11.3f} {r['peak_rss_mb']:>6.0f} MB"
            f"  {r['source']}; {r['threads']} threads, median of {r['repeats']}; RSS after setup {r['rss_ready_mb']:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
