"""Aborts leave nothing behind: SIGTERM to `invoke psql` mid-query ends its Session Manager session and psql."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import boto3
import pytest

from tests.conftest import PROJECT_ROOT
from tests.sandbox_support import Sandbox

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


def active_sessions(box: Sandbox) -> list[dict[str, Any]]:
    ssm = boto3.client("ssm", region_name=box.cfg.region, endpoint_url=box.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    sessions: list[dict[str, Any]] = ssm.describe_sessions(State="Active")["Sessions"]
    return sessions


def test_sigterm_to_psql_mid_query_terminates_its_session_and_psql(sandbox: Sandbox) -> None:
    assert not active_sessions(sandbox)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "psql", "--env", "sandbox", "-c", "select pg_sleep(60)"],
                            cwd=PROJECT_ROOT, env=sandbox.subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not active_sessions(sandbox):  # the event: its session is open (psql runs right after)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # to invoke itself, as a CI timeout or `kill` would
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert active_sessions(sandbox) == [], "the session outlived SIGTERM"
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # psql (same process group) is gone too


def test_sigkill_of_a_background_tunnel_leaves_an_orphan_that_tunnels_reports_and_close_ends(
        sandbox: Sandbox) -> None:
    from ops import tunnels_state
    from tests.sandbox_support import invoke

    started = invoke("tunnel", "--env", "sandbox", "--background", "--local-port", "0", state=sandbox.state_dir,
                     timeout=120)
    assert started.returncode == 0, started.stderr
    record = tunnels_state.read("sandbox")
    assert record is not None and record.session_id
    os.kill(record.pid, signal.SIGKILL)  # no chance to terminate its session
    deadline = time.monotonic() + 30
    while tunnels_state.is_ours(record):  # the event: the process is gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [s["SessionId"] for s in active_sessions(sandbox)] == [record.session_id]
    listed = invoke("tunnels", state=sandbox.state_dir)
    assert f"orphaned: the tunnel to sandbox (pid {record.pid}) is gone but left session(s) {record.session_id}" \
        in listed.stdout
    assert "invoke tunnel-close --env sandbox" in listed.stdout
    closed = invoke("tunnel-close", "--env", "sandbox", state=sandbox.state_dir)
    assert closed.returncode == 0, closed.stderr
    assert active_sessions(sandbox) == []
    assert tunnels_state.list_orphans() == [] and not tunnels_state.state_path("sandbox").exists()
