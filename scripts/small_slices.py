"""Slices smaller than the sliding window: Dice of crops predicted alone vs cut from whole-slice predictions.

    python scripts/small_slices.py [--size 256] [--slices 120-164:4] [--checkpoint models/model.pt]

For each EPFL slice, a `size`² crop (its centre) is predicted on its own, as `predict_slice` does (the 512² window
shrunk to the crop) and with MONAI's own padding of the crop to the window, and compared, by Dice against the labels, with the same
region cut from the prediction of the whole slice.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundle.errors import OneLineParser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print the Dice of each way to predict the crops."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels")
    parser.add_argument("--slices", default="120-164:4", help="EPFL slices")
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "model.pt"))
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer

    from bundle.data.dataset import normalize_slice
    from bundle.data.io import parse_slices, read_label_instances, read_volume
    from bundle.inference.postprocess import split_output
    from bundle.inference.predict import predict_slice
    from bundle.metrics import binary_scores
    from bundle.networks import MultiTaskUNet, load_checkpoint

    epfl = Path(args.dataset_dir) / "epfl_hippocampus"
    image, label = read_volume(epfl / "training.tif"), read_label_instances(epfl / "training_instances.tif")
    network = load_checkpoint(MultiTaskUNet(), args.checkpoint).eval()
    inferer = SlidingWindowInferer([512, 512], 1, 0.25, mode="gaussian")
    modes = ("constant", "reflect")  # MONAI's padding of a slice smaller than the window (reflect: < 2x smaller)
    rows: dict[str, list[float]] = {"cut from the whole slice": [], "alone, window shrunk (predict_slice)": [],
                                    **{f"alone, MONAI {m} padding": [] for m in modes}}  # fmt: skip
    cpu = torch.device("cpu")
    for z in parse_slices(args.slices, len(image)):
        y0, x0 = (image.shape[1] - args.size) // 2, (image.shape[2] - args.size) // 2
        region = (slice(y0, y0 + args.size), slice(x0, x0 + args.size))
        truth = label[z][region] > 0
        whole, _ = predict_slice(network, inferer, normalize_slice(image[z], "image", z), cpu)
        rows["cut from the whole slice"].append(binary_scores(whole[region] >= 0.5, truth, None)["dice"])
        crop = normalize_slice(image[z][region], "image", z)
        rows["alone, window shrunk (predict_slice)"].append(binary_scores(predict_slice(network, inferer, crop, cpu)[0] >= 0.5, truth, None)["dice"])
        batch = torch.as_tensor(crop)[None, None]
        for mode in modes:
            if mode == "reflect" and 3 * args.size <= 512:
                continue  # torch refuses a reflection wider than the slice
            with torch.no_grad():
                probability = split_output(SlidingWindowInferer([512, 512], 1, 0.25, mode="gaussian", padding_mode=mode)(batch, network))[0]
            rows[f"alone, MONAI {mode} padding"].append(binary_scores(probability[0, 0].numpy() >= 0.5, truth, None)["dice"])
    print(f"EPFL slices {args.slices}, centre crops of {args.size}², {Path(args.checkpoint).name}: mean Dice")
    for name, values in rows.items():
        print(f"  {name:38s} {np.mean(values):.3f}" if values else f"  {name:38s} (not possible)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
