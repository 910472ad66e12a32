"""checkov on every environment's synthesized JSON: no failures except the reasoned skips in checkov-skips.toml."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ops.config import available_envs
from tests.conftest import PROJECT_ROOT
from tests.tiers import missing_tool

CHECKOV = PROJECT_ROOT / ".venv" / "bin" / "checkov"
SKIPS_FILE = PROJECT_ROOT / "checkov-skips.toml"


def load_skips() -> list[dict[str, Any]]:
    skips: list[dict[str, Any]] = tomllib.loads(SKIPS_FILE.read_text())["skip"]
    return skips


def skips_for(env: str) -> list[str]:
    return [s["id"] for s in load_skips() if env in s.get("envs", [env])]


def test_every_skip_has_a_reason_and_known_envs() -> None:
    envs = set(available_envs())
    for skip in load_skips():
        assert len(str(skip.get("reason", "")).strip()) >= 40, f"{skip['id']}: write why the check is skipped"
        assert set(skip.get("envs", [])) <= envs, f"{skip['id']}: unknown environment"


@pytest.mark.slow
@pytest.mark.parametrize("env", available_envs())
def test_checkov_passes(env: str, synth_dirs: dict[str, Path], tmp_path: Path) -> None:
    if not CHECKOV.is_file():
        missing_tool("checkov is not installed in .venv (./dev test installs it)")
    # checkov 3.2's terraform_json parser expects every entry of the `terraform` block to be an object and
    # crashes on `required_version` (a string): give it a copy without that one line.
    doc = json.loads((synth_dirs[env] / "cdk.tf.json").read_text())
    doc.get("terraform", {}).pop("required_version", None)
    scanned = tmp_path / "cdk.tf.json"
    scanned.write_text(json.dumps(doc))
    argv = [str(CHECKOV), "-f", str(scanned), "--framework", "terraform_json",
            "--output", "json", "--quiet", "--compact", "--skip-download"]
    skips = skips_for(env)
    if skips:
        argv += ["--skip-check", ",".join(skips)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert failed == [], f"{env}: checkov failures (fix, or add to {SKIPS_FILE.name} with a reason)"
    assert summary["passed"] > 50, "checkov ran its AWS checks on the file"
    assert proc.returncode == 0
