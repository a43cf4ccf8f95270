"""Release versions: configs/metadata.json's package versions, generated from the pinned locks in requirements/.

`requirements/<group>.in` lists what a group needs (the files to edit); `requirements/<group>.txt` is its lock, made
by pip-compile (`bash scripts/lock.sh`, which then runs this module). The runtime group gives the MONAI bundle
spec's `monai_version`, `pytorch_version`, `numpy_version` and `required_packages_version` (every other direct
requirement). The optional groups (tracking, cluster, dev) stay out of the metadata: MONAI 1.6 reads the spec's old
`optional_packages_version` as a deprecated name of `required_packages_version`. Standard library only: the lock
tool's own environment runs it.

    python -m bundle.release [--check]    # rewrite metadata.json's versions from the locks (or only compare)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bundle.errors import fail
from bundle.outputs import atomic_output

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"
METADATA = REPO / "configs" / "metadata.json"
RUNTIME = "runtime"
SPEC_VERSION_KEYS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it (PyYAML, pyyaml and py_yaml are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_requirements(path: Path) -> list[str]:
    """Canonical names of the requirements a `.in` file lists (its `-c`/`-r` option lines and comments skipped)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-") and (match := NAME.match(line)):
            names.append(canonical(match.group(1)))
    return names


def locked_versions(path: Path) -> dict[str, str]:
    """`{canonical name: version}` of every `name==version` pin in a lock file, local build tags dropped."""
    pins = (PIN.match(line) for line in path.read_text().splitlines())
    return {canonical(m.group(1)): m.group(2).split("+")[0] for m in pins if m}


def metadata_versions(requirements: Path = REQUIREMENTS) -> dict:
    """The version keys of metadata.json as the locks in `requirements` give them."""
    runtime = locked_versions(requirements / f"{RUNTIME}.txt")
    versions: dict = {key: runtime[name] for name, key in SPEC_VERSION_KEYS.items()}
    direct = [name for name in direct_requirements(requirements / f"{RUNTIME}.in") if name not in SPEC_VERSION_KEYS]
    versions["required_packages_version"] = {name: runtime[name] for name in direct}
    return versions


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) metadata.json's versions; exit 1 when --check finds a difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare metadata.json with the locks")
    args = parser.parse_args(argv)
    try:
        versions = metadata_versions()
    except (OSError, KeyError) as err:
        fail(f"{REQUIREMENTS}: a lock is missing or does not pin {err}; run: bash scripts/lock.sh")
    meta = json.loads(METADATA.read_text())
    stale = sorted(key for key, value in versions.items() if meta.get(key) != value)
    if args.check:
        print(f"{METADATA}: " + (f"stale versions: {', '.join(stale)}" if stale else "versions match the locks"))
        return 1 if stale else 0
    with atomic_output(METADATA) as tmp:
        tmp.write_text(json.dumps({key: versions.get(key, value) for key, value in meta.items()}, indent=4, ensure_ascii=False) + "\n")
    print(f"{METADATA}: " + (f"updated {', '.join(stale)}" if stale else "unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
