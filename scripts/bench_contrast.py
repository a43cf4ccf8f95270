"""Time one adaptation iteration (forward + backward + Adam step) with and without the contrastive loss.

    python scripts/bench_contrast.py [--source_free] [--iterations 30] [--warmup 5] [--width 16] [--size 256]

Batch: 2 source (VNC III) + 2 target (EPFL) crops (configs/adapt_wda.yaml), or with --source_free the 2 target crops
alone and the source model's fixed prototypes (configs/finetune.yaml, the shipped recipe); target pseudo-labels
from the model itself (p >= 0.7 -> 1, p <= 0.3 -> 0, else ignored), point_mask = foreground. The two variants
alternate in blocks so that load from other processes hits both alike; prints the median ms/iteration of each,
the overhead, and the time of one k-means refresh.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.io import read_volume  # noqa: E402
from bundle.handlers import PrototypeBank  # noqa: E402
from bundle.inference import FeatureInferer  # noqa: E402
from bundle.losses import AdaptationLoss, ClassFocusedContrastLoss, ContrastiveAdaptationLoss, MultiTaskLoss  # noqa: E402
from bundle.networks import MultiTaskUNet, load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def zscore(image: np.ndarray) -> torch.Tensor:
    """Per-crop z-score as a (1, H, W) float tensor."""
    image = image.astype(np.float32)
    return torch.as_tensor((image - image.mean()) / max(float(image.std()), 1e-6))[None]


def make_batch(
    data: Path, size: int, network: torch.nn.Module, device: torch.device, source_free: bool
) -> tuple[torch.Tensor, dict]:
    """(images, targets) of 2 source + 2 target crops, or the target crops alone, as prepare_paired_batch gives."""
    crops = [(slice(0, size), slice(0, size)), (slice(size, 2 * size), slice(size, 2 * size))]
    target = tifffile.imread(data / "epfl_hippocampus/training.tif", key=[0, 30])
    target_images = [zscore(slice_[crop]) for slice_, crop in zip(target, crops)]
    with torch.no_grad():
        p = torch.softmax(network(torch.stack(target_images).to(device))[:, :2], 1)[:, 1:].cpu()
    target_labels = torch.full_like(p, 255.0)
    target_labels[p <= 0.3], target_labels[p >= 0.7] = 0.0, 1.0
    source_images, source_labels = [], []
    if not source_free:  # the VNC III volumes are read only when the batch has source crops
        raw, masks = read_volume(data / "vnc3/stack1/raw")[:2], read_volume(data / "vnc3/stack1/mitochondria")[:2]
        source_images = [zscore(slice_[crop]) for slice_, crop in zip(raw, crops)]
        source_labels = [torch.as_tensor(m[crop] > 127, dtype=torch.float32)[None] for m, crop in zip(masks, crops)]
    images = torch.stack(source_images + target_images).to(device)
    label = torch.stack(source_labels + list(target_labels)).to(device)
    targets = {
        "label": label,
        "density": torch.zeros_like(label),
        "density_mask": torch.ones_like(label),
        "point_mask": (label == 1).float(),
        "num_source": torch.tensor(len(source_images)),
    }
    return images, targets


def step_time(network, optimizer, inferer, loss, images, targets, device) -> float:
    """Seconds of one forward + backward + optimizer step."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    value = loss(inferer(images, network), targets)
    value.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    """Parse arguments, time both variants, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=5, help="iterations per alternating block")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "model.pt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--source_free", action="store_true", help="target crops only, fixed source prototypes")
    parser.add_argument("--source_prototypes", type=Path, default=REPO / "models" / "source_prototypes.pt")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    network = MultiTaskUNet(width=args.width)
    if args.width == 16 and args.checkpoint.is_file():
        load_checkpoint(network, args.checkpoint)
    network = network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-6)  # tiny steps: the pseudo-labels stay meaningful
    images, targets = make_batch(args.data, args.size, network, device, args.source_free)
    base = AdaptationLoss(MultiTaskLoss())
    bank = PrototypeBank(fixed_source_prototypes=args.source_prototypes if args.source_free else None)
    contrast = ClassFocusedContrastLoss(bank)
    variants = {
        "without": (lambda x, net: net(x), base),
        "with": (FeatureInferer(), ContrastiveAdaptationLoss(base, contrast, 5e-3)),
    }
    for name, (inferer, loss) in variants.items():
        for _ in range(args.warmup):
            step_time(network, optimizer, inferer, loss, images, targets, device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    while min(len(t) for t in times.values()) < args.iterations:
        for name, (inferer, loss) in variants.items():
            times[name] += [step_time(network, optimizer, inferer, loss, images, targets, device) for _ in range(args.block)]
    start = time.perf_counter()
    bank.refresh(1000)
    refresh_ms = (time.perf_counter() - start) * 1e3
    without, with_ = (statistics.median(times[n][: args.iterations]) * 1e3 for n in ("without", "with"))
    num_source = int(targets["num_source"])
    queries = {c: int(((targets["label"][num_source:] == c)).sum()) for c in (0, 1)}
    print(f"device {device}, threads {torch.get_num_threads()}, batch {num_source}+2 of {args.size}^2, width {args.width}, "
          f"{args.iterations} iterations after {args.warmup} warm-up; target pixels per class {queries}")  # fmt: skip
    print(f"without contrast: {without:8.1f} ms/iteration (median)")
    print(f"with contrast:    {with_:8.1f} ms/iteration (median)")
    print(f"overhead:         {100 * (with_ - without) / without:8.1f} %")
    print(f"k-means refresh ({len(bank.buffers.get('target_bg_kmeans', []))} buffered features): {refresh_ms:.1f} ms "
          f"(once per refresh_interval iterations: {refresh_ms / 1000:.3f} ms/iteration at 1000)")  # fmt: skip


if __name__ == "__main__":
    main()
