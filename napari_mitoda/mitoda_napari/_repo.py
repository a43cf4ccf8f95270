"""The mitoda repository this plugin belongs to, and its `bundle` package and scripts.

mitoda is not an installable package (the repository's pyproject.toml): `bundle` and scripts/ live in the
repository. The plugin is installed editable (`pip install --no-deps -e napari_mitoda`, scripts/setup.sh napari),
which leaves this file in place, so the repository is two folders above this one: found from the file itself, it
needs no setting, no environment variable and no copy of `bundle` (that could drift from the repository's).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
if not (REPO / "bundle" / "__init__.py").is_file():
    raise ImportError(f"mitoda_napari: no mitoda repository at {REPO} (bundle/ missing); install the plugin in place "
                      "from the repository: bash scripts/setup.sh napari")  # fmt: skip
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_scripts: dict[str, ModuleType] = {}


def script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (imported once): the command-line tools whose `main` the widget runs."""
    if name not in _scripts:
        spec = importlib.util.spec_from_file_location(f"mitoda_scripts_{name}", REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _scripts[name] = module
    return _scripts[name]
