"""The cdktf app: one stack per environment file in envs/.

`BASTIONLESS_ENVS` (comma-separated) limits synthesis to some environments; `invoke synth`
sets it so one environment can be synthesized without paying for the others. With
`BASTIONLESS_SYNTH_MANIFEST` set (ops.synth sets it) the app also writes there the project files it
imported: the synth cache is keyed on exactly those.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cdktf import App

from ops.config import available_envs, load_env
from ops.facts import ENVS_ENV, SYNTH_MANIFEST_ENV

# Importing anything under `stacks` first runs stacks/__init__.py, which installs the fast provider
# import before any provider module loads.
from stacks.stack import BastionlessStack


def build_app(env_names: list[str]) -> App:
    app = App()
    for name in env_names:
        cfg = load_env(name)
        BastionlessStack(app, cfg.stack_name, config=cfg)
    return app


def imported_project_files() -> list[str]:
    """Every file of this project that is loaded as a module now (paths relative to the project)."""
    root = Path(__file__).resolve().parent
    installed = Path(sys.prefix).resolve()  # a virtual environment inside the project is not ours
    found: set[str] = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if not name:
            continue
        path = Path(name).resolve()
        if path.is_relative_to(root) and not path.is_relative_to(installed):
            found.add(path.relative_to(root).as_posix())
    return sorted(found)


def write_import_manifest(path: Path) -> None:
    path.write_text(json.dumps(imported_project_files()))


def main() -> None:
    selected = [n for n in os.environ.get(ENVS_ENV, "").split(",") if n]
    build_app(selected or available_envs()).synth()
    manifest = os.environ.get(SYNTH_MANIFEST_ENV)
    if manifest:
        write_import_manifest(Path(manifest))


if __name__ == "__main__":
    main()
