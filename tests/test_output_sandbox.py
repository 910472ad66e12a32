"""A newcomer's first runs, for real: the virtual environment activated (no ./dev), no mirror
variable, this offline machine. `invoke sandbox up` from a fresh state dir, `validate` and a no-op
`deploy` succeed within their line budgets, print no escape codes when not on a terminal, and
terraform's whole output is in the log file whose path they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops.terraform import MIRROR_ENV, discovered_mirror
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

UP_BUDGET = 30
DEPLOY_BUDGET = 10
HEARTBEAT = re.compile(r"^\d\d:\d\d:\d\d terraform .*: \d+/\d+ done")


def _activated_env(state: Path) -> dict[str, str]:
    """What `. .venv/bin/activate` leaves in a fresh shell: no ./dev exports, no mirror variable."""
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items()
           # COLUMNS: bash sets it without exporting it, so a newcomer's `invoke` does not see it (CI's does).
           if k not in (MIRROR_ENV, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "PYTHONPATH", "NO_COLOR",
                        "COLUMNS")}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv_bin.parent),
               BASTIONLESS_STATE_DIR=str(state))
    return env


def _invoke(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    proc = subprocess.run(["invoke", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=900, check=False)
    text = proc.stdout + proc.stderr
    assert "\x1b" not in text, f"escape codes in non-terminal output:\n{text}"
    return proc.returncode, [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.skipif(discovered_mirror() is None, reason="no provider mirror at a usual place: this machine is online")
def test_first_runs_with_the_venv_activated_and_no_mirror_variable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = _activated_env(state)
    try:
        code, up = _invoke(env, "sandbox", "up")
        shown = "\n".join(up)
        assert code == 0, shown
        # Heartbeats ("hh:mm:ss terraform apply ...: n/m done") come every 15 s of a long wait, so a slower
        # machine prints more of them; the budget is for everything else.
        said = [ln for ln in up if not HEARTBEAT.match(ln)]
        assert len(said) <= UP_BUDGET, f"`invoke sandbox up` printed {len(said)} lines besides heartbeats " \
                                       f"(budget {UP_BUDGET}):\n{shown}"
        assert re.search(r"plan for sandbox: \d+ to create", shown), shown
        assert re.search(r"sandbox: apply complete in \d+\.\d s: \d+ added, 0 changed, 0 destroyed", shown), shown
        logs = [Path(m) for m in re.findall(r"^terraform's output: (\S+)$", shown, re.MULTILINE)]
        assert logs and all(p.is_file() for p in logs), shown
        full = "".join(p.read_text() for p in logs)
        assert "Apply complete! Resources:" in full and "Creation complete after" in full, "the log has it all"
        assert "Creation complete after" not in shown
        print(f"--- invoke sandbox up ({len(up)} lines)\n{shown}")

        code, validate = _invoke(env, "validate", "-e", "sandbox")
        assert code == 0 and "valid" in validate, "\n".join(validate)

        code, deploy = _invoke(env, "deploy", "-e", "sandbox", "--yes")
        shown = "\n".join(deploy)
        assert code == 0, shown
        assert len(deploy) <= DEPLOY_BUDGET, f"a no-op deploy printed {len(deploy)} lines:\n{shown}"
        assert "sandbox: no changes; the infrastructure matches the configuration" in deploy, shown
        print(f"--- invoke deploy, no changes ({len(deploy)} lines)\n{shown}")
    finally:
        _invoke(env, "sandbox", "down")


def test_a_failed_deploy_in_up_says_the_services_keep_running(tmp_path: Path) -> None:
    """A broken mirror setting fails the deploy after the services started: say so, and how to stop them."""
    state = tmp_path / "state"
    env = _activated_env(state)
    env[MIRROR_ENV] = str(tmp_path / "no-mirror-here")
    try:
        code, up = _invoke(env, "sandbox", "up")
        shown = "\n".join(up)
        assert code == 1, shown
        assert "the sandbox services keep running: fix the error and rerun `invoke sandbox up`, or stop them with " \
               "`invoke sandbox down`" in up, shown
        assert up[-1].startswith(f"error: the provider mirror {tmp_path / 'no-mirror-here'} (from {MIRROR_ENV}) does "
                                 "not exist"), shown
    finally:
        code, down = _invoke(env, "sandbox", "down")
    assert code == 0 and "stopped" in down[-1], down
