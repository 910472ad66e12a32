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
