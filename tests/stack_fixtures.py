"""Synthesize every environment once per test session (one child process) and hand out the JSON.

Registered once by tests/conftest.py (importing the fixtures into a test module would register a second
copy and synthesize again); the fixtures are named `synth_dirs` and `synthesized`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ops.config import EnvConfig, available_envs, load_env
from ops.synth import SYNTH_FILE, synth_many

ENVS = available_envs()


@pytest.fixture(scope="session", name="synth_dirs")
def synth_dirs_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cfgs = [load_env(n) for n in ENVS]
    return synth_many(cfgs, outdir=tmp_path_factory.mktemp("stack-synth"))


@pytest.fixture(scope="session", name="synthesized")
def synthesized_fixture(synth_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {name: json.loads((path / SYNTH_FILE).read_text()) for name, path in synth_dirs.items()}


def resources(doc: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """Resources of one type keyed by construct path relative to the stack ("Relay/Instance")."""
    found: dict[str, dict[str, Any]] = {}
    for cfg in doc.get("resource", {}).get(resource_type, {}).values():
        path = cfg["//"]["metadata"]["path"].split("/", 1)[1]
        found[path] = cfg
    return found


def one(doc: dict[str, Any], resource_type: str, path: str) -> dict[str, Any]:
    found = resources(doc, resource_type)
    assert path in found, f"no {resource_type} at {path}; have {sorted(found)}"
    return found[path]


def ref(doc: dict[str, Any], resource_type: str, path: str, attr: str = "id") -> str:
    """The Terraform reference `${type.name.attr}` to a resource given by construct path."""
    for name, cfg in doc.get("resource", {}).get(resource_type, {}).items():
        if cfg["//"]["metadata"]["path"].split("/", 1)[1] == path:
            return f"${{{resource_type}.{name}.{attr}}}"
    raise AssertionError(f"no {resource_type} at {path}")


def synth_one(cfg: EnvConfig, outdir: Path) -> dict[str, Any]:
    """One stack from a config a test changed (needs the `cdktf_runtime` fixture); its cdk.tf.json."""
    from cdktf import App

    from stacks.stack import BastionlessStack

    app = App(outdir=str(outdir))
    BastionlessStack(app, cfg.stack_name, config=cfg)
    app.synth()
    doc: dict[str, Any] = json.loads((outdir / "stacks" / cfg.stack_name / "cdk.tf.json").read_text())
    return doc
