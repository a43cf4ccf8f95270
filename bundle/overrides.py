"""Config overrides checked against the configs: a mistyped `--key` is refused instead of silently added.

MONAI's `monai.bundle run` adds any unknown `--key value` to the config, so a typo (`--input` for `--input_image`)
runs on the default instead. `check_command_line()`, first in every config's `initialize`, refuses it in one line
with the closest known key; `scripts/finetune.py` checks its extra `--KEY VALUE` pairs with `unknown_override`.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from bundle.errors import InputError


def config_ids(config: object, prefix: str = "") -> set[str]:
    """Every id of a parsed config: top-level keys and their nested `a#b#c` paths (list items by index)."""
    ids: set[str] = set()
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        ids |= {name, *config_ids(value, f"{name}#")}
    return ids


def known_ids(config_files: Sequence[str | os.PathLike]) -> set[str]:
    """The ids of `config_files` merged as `monai.bundle run` merges them (an override file may add ids)."""
    from monai.bundle import ConfigParser

    ids: set[str] = set()
    for path in config_files:
        ids |= config_ids(ConfigParser.load_config_file(str(path)))
    return ids | {"bundle_root"}  # MONAI's own id, which every config may take


def unknown_override(keys: Iterable[str], config_files: Sequence[str | os.PathLike]) -> InputError | None:
    """An InputError naming the first of `keys` that no config defines and the closest known key (or the config
    beside them that defines it, e.g. `--workers` without configs/inference_cluster.yaml), or None."""
    known = known_ids(config_files)
    for key in keys:
        if key not in known:
            names = ", ".join(Path(p).name for p in config_files)
            return InputError(f"--{key}: no such key in {names}; {_hint(key, known, config_files)} "
                              "(unknown keys would be ignored)")  # fmt: skip
    return None


def _hint(key: str, known: set[str], config_files: Sequence[str | os.PathLike]) -> str:
    """The fix for an unknown `key`: an override config beside `config_files` that defines it and names them all in
    its header comment (the command it goes in, as configs/inference_cluster.yaml names configs/inference.yaml;
    the one naming the fewest configs), else the closest known key."""
    from monai.bundle import ConfigParser

    used = {Path(p).resolve() for p in config_files}
    folder = Path(config_files[0]).parent if config_files else Path()
    overrides = []
    for other in sorted(folder.glob("*.yaml")):
        if other.resolve() in used:
            continue
        header = "\n".join(_leading_comments(other))
        config = ConfigParser.load_config_file(str(other))
        if key in config and "run" not in config and all(f"{folder.name}/{Path(p).name}" in header for p in used):
            overrides.append((header.count(".yaml"), other.name))
    if overrides:
        return f"it is a key of {folder.name}/{min(overrides)[1]}: add that file to --config_file"
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
    return f"did you mean --{close[0]}?" if close else "see the config's keys"


def _leading_comments(path: Path) -> list[str]:
    """The comment lines a config file starts with."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def command_line_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(config files, override keys) of a `python -m monai.bundle run ...` argument list (fire's syntax:
    `--key value` or `--key=value`); `run`'s own parameters (config_file, meta_file, tracking, ...) are not keys."""
    from monai.bundle.scripts import run

    own = set(inspect.signature(run).parameters) - {"override"}
    files: list[str] = []
    keys = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or len(arg) <= 2:
            continue
        key, has_value, value = arg[2:].partition("=")
        if key == "config_file":
            value = value if has_value else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            files = [parsed] if isinstance(parsed, str) else list(parsed)
        elif key not in own:
            keys.append(key)
    return files, keys


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse (one-line InputError) an override key that none of the run's configs defines.

    Acts only when the process is `python -m monai.bundle run`; a script that calls `monai.bundle.run` itself
    checks its own arguments.
    """
    argv = sys.argv if argv is None else argv
    main = Path(argv[0]) if argv else Path()
    if len(argv) < 2 or main.name != "__main__.py" or main.parent.parts[-2:] != ("monai", "bundle") or argv[1] != "run":
        return
    files, keys = command_line_overrides(argv[2:])
    error = unknown_override(keys, files) if files else None
    if error is not None:
        raise error
