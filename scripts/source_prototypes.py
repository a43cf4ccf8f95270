"""Source prototypes of a model for source-free fine-tuning: mean normalised decoder features of source fg/bg pixels.

Example (writes the shipped models/source_prototypes.pt):
    python scripts/source_prototypes.py [--checkpoint models/source_model.pt] [--dataset_dir ../shared/data] \
        [--source_image IMG --source_label LBL] [--output models/source_prototypes.pt]

Eq. 7 of the main paper for k = s, computed once over the whole source volume (VNC III by default): the mean of the
L2-normalised decoder features z of the pixels labelled c whose predicted p_c > --delta_easy (0.95, as
configs/finetune.yaml), seen in 256² tiles (the training crop size). The file holds "source_fg", "source_bg" (D,),
the pixel counts and the sha256 of the checkpoint; configs/finetune.yaml gives it to the PrototypeBank
(`fixed_source_prototypes`). Bad input prints one line 'mitoda: error: ...' on stderr, exits with code 2 and writes
no file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from bundle.errors import OneLineParser as _Parser, fail as _fail  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "source_model.pt"), help="source model")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data"), help="data root (VNC III)")
    parser.add_argument("--source_image", default=None, help="source EM volume (default: VNC III stack 1 raw)")
    parser.add_argument("--source_label", default=None, help="its labels: instances or an 8-bit mask")
    parser.add_argument("--width", type=int, default=16, help="network width of the checkpoint (default 16)")
    parser.add_argument("--tile", type=int, default=256, help="tile size, the training crop (default 256)")
    parser.add_argument("--delta_easy", type=float, default=0.95, help="confidence threshold δe (default 0.95)")
    parser.add_argument("--output", default=str(REPO / "models" / "source_prototypes.pt"), help="file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; return the exit code."""
    args = _parser().parse_args(argv)
    if (args.source_image is None) != (args.source_label is None):
        _fail("pass --source_image and --source_label together (or neither, for VNC III under --dataset_dir)")
    if not 0.0 <= args.delta_easy < 1.0:
        _fail(f"--delta_easy {args.delta_easy} is not in [0, 1); pass e.g. 0.95")
    output = Path(args.output).expanduser()
    if output.is_dir():
        _fail(f"{output}: is a folder; pass the name of the .pt file to write")

    import torch

    from bundle.data.dataset import check_data_root, load_slices
    from bundle.outputs import atomic_output
    from bundle.errors import InputError
    from bundle.losses.prototypes import tile_prototypes
    from bundle.networks import MultiTaskUNet, checkpoint_sha256, load_checkpoint

    start = time.perf_counter()
    try:
        if args.source_image is None:
            check_data_root(args.dataset_dir)
        image = args.source_image or f"{args.dataset_dir}/vnc3/stack1/raw"
        label = args.source_label or f"{args.dataset_dir}/vnc3/stack1/mitochondria"
        network = load_checkpoint(MultiTaskUNet(in_channels=1, width=args.width), args.checkpoint)
        items = load_slices(image, label, with_density=False, binary_label=True)
        result = tile_prototypes(network, items, args.tile, args.delta_easy)
    except (InputError, ValueError) as exc:
        _fail(str(exc))
    result.update(checkpoint_sha256=checkpoint_sha256(args.checkpoint), delta_easy=args.delta_easy, tile=args.tile)
    with atomic_output(output) as tmp:
        torch.save(result, tmp)
    cosine = float(torch.nn.functional.cosine_similarity(result["source_fg"], result["source_bg"], dim=0))
    print(
        f"wrote {output}: source_fg from {result['num_fg']} px, source_bg from {result['num_bg']} px of {len(items)} "
        f"slices (cosine fg/bg {cosine:.3f}) in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
