"""A newcomer's runs that go wrong, for real: the virtual environment activated (no ./dev). Their first
runs that go right (line budgets, the log file, no escape codes) are the end-to-end test's
(tests/test_sandbox_e2e.py), which deploys from a fresh state dir in the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.terraform import MIRROR_ENV
from tests.sandbox_support import activated_env, invoke_activated

pytestmark = pytest.mark.slow


def test_a_failed_deploy_in_up_says_the_services_keep_running(tmp_path: Path) -> None:
    """A broken mirror setting fails the deploy after the services started: say so, and how to stop them."""
    state = tmp_path / "state"
    env = activated_env(state)
    env[MIRROR_ENV] = str(tmp_path / "no-mirror-here")
    try:
        code, up = invoke_activated(env, "sandbox", "up")
        shown = "\n".join(up)
        assert code == 1, shown
        assert "the sandbox services keep running: fix the error and rerun `invoke sandbox up`, or stop them with " \
               "`invoke sandbox down`" in up, shown
        assert up[-1].startswith(f"error: the provider mirror {tmp_path / 'no-mirror-here'} (from {MIRROR_ENV}) does "
                                 "not exist"), shown
    finally:
        code, down = invoke_activated(env, "sandbox", "down")
    assert code == 0 and "stopped" in down[-1], down
