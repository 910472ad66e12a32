"""`invoke sandbox up|status|down` for real: moto, the Session Manager endpoint and PostgreSQL as processes.

The stack is not deployed here (`--no-deploy`): the deploy path is the end-to-end test's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import boto3
import psycopg
import pytest

from ops.sandbox import manager, procs
from tests.sandbox_support import assert_nothing_running, error_line, invoke, records_in

pytestmark = pytest.mark.slow


def _client(service: str, url: str) -> object:
    return boto3.client(service, region_name="us-east-1", endpoint_url=url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _status(state: Path) -> tuple[int, dict[str, list[str]]]:
    proc = invoke("sandbox", "status", state=state)
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:] if line.strip()}
    return proc.returncode, rows


def test_up_is_idempotent_restarts_what_died_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seen: list[procs.ProcRecord] = []
    try:
        up = invoke("sandbox", "up", "--no-deploy", state=state)
        assert up.returncode == 0, up.stderr
        first = records_in(state)
        seen += first
        assert len(first) == 3 and all(procs.is_alive(r) for r in first)

        endpoints = json.loads((state / "endpoints.json").read_text())
        # What moto lacks goes to the local endpoint; everything else to moto.
        assert {"default", "ssm", "ecs"} <= set(endpoints) and endpoints["ssm"] == endpoints["ecs"]
        assert endpoints["default"] != endpoints["ssm"]
        # moto is the AWS API, with the managed policies the relay role attaches.
        iam = _client("iam", endpoints["default"])
        assert iam.get_policy(  # type: ignore[attr-defined]
            PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore")["Policy"]["PolicyName"]
        # The endpoint answers what moto lacks, and proxies the rest to it.
        ssm = _client("ssm", endpoints["ssm"])
        assert ssm.describe_sessions(State="Active")["Sessions"] == []  # type: ignore[attr-defined]
        ssm.put_parameter(Name="/probe", Value="through the endpoint", Type="String")  # type: ignore[attr-defined]
        moto_ssm = _client("ssm", endpoints["default"])
        assert moto_ssm.get_parameter(Name="/probe")["Parameter"]["Value"] == "through the endpoint"  # type: ignore[attr-defined]

        code, rows = _status(state)
        assert code == 0
        assert [rows[c][3] for c in ("moto", "ssm-endpoint", "postgres")] == ["healthy"] * 3
        assert rows["stack"][3:5] == ["not", "deployed"]
        pg_port = int(rows["postgres"][2])
        # Like RDS: TCP on loopback, and no way in without the password.
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres", connect_timeout=3)

        again = invoke("sandbox", "up", "--no-deploy", state=state)
        assert again.returncode == 0, again.stderr
        assert records_in(state) == first, "a second `up` must keep the running components"

        moto_rec = next(r for r in first if r.url == endpoints["default"])
        os.kill(moto_rec.pid, signal.SIGKILL)
        assert procs.wait_until(lambda: not procs.is_alive(moto_rec), timeout=10)
        code, rows = _status(state)
        assert code == 1 and rows["moto"][3] == "dead"

        healed = invoke("sandbox", "up", "--no-deploy", state=state)
        assert healed.returncode == 0, healed.stderr
        assert "restarting it" in healed.stderr
        after = records_in(state)
        seen += after
        assert after[0].pid != first[0].pid, "moto restarted"
        assert after[1].pid != first[1].pid, "the endpoint follows moto to its new URL"
        assert after[2] == first[2], "PostgreSQL kept"
        assert json.loads((state / "endpoints.json").read_text())["default"] == after[0].url
    finally:
        down = invoke("sandbox", "down", state=state)
    assert down.returncode == 0, down.stderr
    assert_nothing_running(seen)
    assert not (state / manager.STATE_FILE).exists() and not (state / "endpoints.json").exists()
    assert not (state / "postgres").exists()
    code, rows = _status(state)
    assert code == 1 and rows["moto"][3] == "stopped"
    assert invoke("sandbox", "down", state=state).returncode == 0, "down twice is fine"


def test_busy_port_fails_before_anything_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = invoke("sandbox", "up", "--no-deploy", "--pg-port", str(port), state=state)
    assert proc.returncode == 1
    assert error_line(proc) == (f"error: PostgreSQL port {port} on 127.0.0.1 is already in use by another process; "
                                f"next: free that port, or pass --pg-port 0 to pick a free one")
    assert records_in(state) == [], "nothing may be started when a port is busy"


def test_sandbox_runs_only_sandbox_envs_and_knows_its_actions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = invoke("sandbox", "up", "--env", "prod", state=state)
    assert proc.returncode == 1 and "prod.toml is not a sandbox environment" in error_line(proc)
    proc = invoke("sandbox", "restart", state=state)
    assert proc.returncode == 2 and "unknown action 'restart'" in error_line(proc)
    assert records_in(state) == []
