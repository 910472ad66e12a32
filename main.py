"""The cdktf app: one stack per environment file in envs/.

`BASTIONLESS_ENVS` (comma-separated) limits synthesis to some environments; `invoke synth`
sets it so one environment can be synthesized without paying for the others.
"""

from __future__ import annotations

import os

from cdktf import App

from ops.config import available_envs, load_env
from ops.facts import ENVS_ENV

# Importing anything under `stacks` first runs stacks/__init__.py, which installs the fast provider
# import before any provider module loads.
from stacks.stack import BastionlessStack


def build_app(env_names: list[str]) -> App:
    app = App()
    for name in env_names:
        cfg = load_env(name)
        BastionlessStack(app, cfg.stack_name, config=cfg)
    return app


def main() -> None:
    selected = [n for n in os.environ.get(ENVS_ENV, "").split(",") if n]
    build_app(selected or available_envs()).synth()


if __name__ == "__main__":
    main()
