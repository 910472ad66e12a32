"""Aborts leave nothing behind: SIGTERM to `invoke psql` mid-query or to `invoke migrate` mid-migration ends its
Session Manager session and its child (psql, Alembic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import PROJECT_ROOT
from tests.proc_support import processes
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


def test_sigterm_to_migrate_mid_migration_terminates_its_session_and_alembic(sandbox: Sandbox,
                                                                              tmp_path: Path) -> None:
    """The migration sleeps in the database; SIGTERM reaches `invoke migrate` while Alembic runs it."""
    import threading

    from tests.db_fixtures import copy_migrations, revision_file

    ini = copy_migrations(tmp_path, extra={"0004_slow.py": revision_file(
        "0004", "0003", "    op.execute('SELECT pg_sleep(60)')", doc="sleeps so SIGTERM lands mid-migration")})
    assert not active_sessions(sandbox)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "migrate", "--env", "sandbox", "--ini", str(ini), "--yes"],
                            cwd=PROJECT_ROOT, env=sandbox.subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        # The event: Alembic says it is running the revision that sleeps.
        while not any("Running upgrade 0003 -> 0004" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = "".join(lines)
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    assert active_sessions(sandbox) == [], "the session outlived SIGTERM"
    assert _group(proc.pid) == [], "Alembic (same process group) outlived SIGTERM"


def _group(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group, with their command lines."""
    found = []
    for proc in processes():
        if proc.pgid == pgid and proc.state != "Z":
            try:
                cmd = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found.append(f"{proc.pid} {proc.state} {cmd!r}")
    return found


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
