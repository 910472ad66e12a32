"""The endpoint as `invoke sandbox up` runs it: a process that prints READY and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import boto3

from ops.facts import SESSIONS_FILE
from tests.ssm_support import REGION

pytest_plugins = ["tests.ssm_fixtures"]


def test_process_prints_ready_serves_and_stops_on_sigterm(moto_url: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.sandbox.ssm_endpoint", "--host", "127.0.0.1", "--port", "0",
         "--moto-url", moto_url, "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        ssm = boto3.client("ssm", region_name=REGION, endpoint_url=url, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        assert ssm.describe_sessions(State="Active")["Sessions"] == []
        assert json.loads((tmp_path / SESSIONS_FILE).read_text()) == {"sessions": []}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refuses_non_loopback(moto_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops.sandbox.ssm_endpoint", "--host", "0.0.0.0", "--moto-url", moto_url,  # noqa: S104
         "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=30,
        cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode != 0
    assert "loopback" in result.stderr
