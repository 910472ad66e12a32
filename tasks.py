"""bastionless: `invoke --list` shows every task. The logic lives in `ops/`; tasks only map flags."""

from __future__ import annotations

import importlib
import pkgutil

from invoke import Collection, Task

import cli

ns = Collection()
for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda i: i.name):
    if info.name.startswith("_"):
        continue
    module = importlib.import_module(f"cli.{info.name}")
    for obj in vars(module).values():
        if isinstance(obj, Task) and obj.__module__ == module.__name__:
            ns.add_task(obj)
