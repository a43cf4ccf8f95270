"""Print scored runs side by side, each against the first (configs/evaluate.yaml's metrics.json folders).

    python scripts/compare_scores.py NAME=SCORES_DIR [NAME=SCORES_DIR ...]

e.g. `python scripts/compare_scores.py NoAdapt=runs/demo/noadapt_scores fine-tuned=runs/demo/scores`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import InputError, OneLineParser, fail  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse NAME=DIR pairs, read each metrics.json and print the table."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=SCORES_DIR", help="a row name and its scores folder")
    args = parser.parse_args(argv)
    from bundle.metrics.evaluate import read_scores, score_table

    pairs = [run.partition("=") for run in args.runs]
    if not all(name and sep and folder for name, sep, folder in pairs):
        fail(f"{' '.join(args.runs)}: each run is NAME=SCORES_DIR; e.g. NoAdapt=runs/demo/noadapt_scores")
    try:
        rows = {name: read_scores(folder) for name, _, folder in pairs}
    except InputError as err:
        fail(str(err))
    print(score_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
