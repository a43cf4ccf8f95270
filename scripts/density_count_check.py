"""Print, per EPFL slice, the true instance count against the density head's raw mass and floor-removed count.

    python scripts/density_count_check.py [--checkpoints runs/noadapt/model.pt runs/oracle/model.pt] [--slices 0,30,60,90]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.inferers import SlidingWindowInferer  # noqa: E402

from bundle.data.dataset import load_slices  # noqa: E402
from bundle.inference import predict_slice  # noqa: E402
from bundle.networks import MultiTaskUNet, load_checkpoint  # noqa: E402
from bundle.pseudo_labels import estimate_count  # noqa: E402


def main() -> None:
    """Predict the chosen slices with each checkpoint and print true count, raw density mass and estimate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default="../shared/data")
    parser.add_argument("--checkpoints", nargs="+", default=["runs/noadapt/model.pt", "runs/oracle/model.pt"])
    parser.add_argument("--slices", default="0,30,60,90")
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    epfl = Path(args.dataset_dir) / "epfl_hippocampus"
    items = load_slices(epfl / "training.tif", epfl / "training_instances.tif", args.slices, with_density=False)
    inferer = SlidingWindowInferer(roi_size=(256, 256), sw_batch_size=4, overlap=0.25, mode="gaussian")
    for checkpoint in args.checkpoints:
        network = load_checkpoint(MultiTaskUNet(width=args.width), checkpoint).eval()
        for item in items:
            _, density = predict_slice(network, inferer, item["image"][0], torch.device("cpu"))
            true = len(np.unique(item["label"])) - 1
            print(f"{checkpoint}: true {true}, raw mass {density.sum():.1f}, floor-removed count {estimate_count(density):.1f}")


if __name__ == "__main__":
    main()
