"""The real `session-manager-plugin` against the local endpoint: the endpoint speaks the agent's protocol.

Needs the plugin (tests.ssm_support.plugin_path): skipped on a laptop without it, a failure in CI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.ssm_support import DB_HOST, DB_PORT, REGION, EndpointBox, EndpointThread, free_port, plugin_path

pytest_plugins = ["tests.ssm_fixtures"]


PLUGIN = plugin_path()


def echo_once(port: int, blob: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(blob)
        got = b""
        while len(got) < len(blob):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def run_plugin(box: EndpointBox, tmp_path: Path) -> None:
    local_port = free_port()
    params = {"Target": box.relay, "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
              "Parameters": {"host": [DB_HOST], "portNumber": [str(DB_PORT)], "localPortNumber": [str(local_port)]}}
    ssm = box.endpoint.ssm()
    response = ssm.start_session(**params)
    response.pop("ResponseMetadata")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HOME": str(tmp_path)}
    # The argv the AWS CLI passes: response JSON, region, operation, profile, request JSON, endpoint URL.
    proc = subprocess.Popen([PLUGIN, json.dumps(response), REGION, "StartSession", "", json.dumps(params),
                             box.endpoint.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while not any("opened for sessionId" in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        time.sleep(0.2)
        for i in range(3):  # sequential connections: re-dial (basic) or new streams (smux)
            blob = os.urandom(100_000 + i)
            assert echo_once(local_port, blob) == blob
        os.killpg(proc.pid, signal.SIGINT)  # the plugin sends the TerminateSession flag
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The plugin writes the TerminateSession flag and exits at once; when its socket still holds unread
    # data the kernel sends a reset that can beat the flag. Then, as with AWS, the session is only
    # disconnected (resumable until the idle timeout). Either way it must no longer be Connected.
    deadline = time.monotonic() + 5
    while True:
        sessions = [s for state in ("Active", "History") for s in ssm.describe_sessions(State=state)["Sessions"]]
        status = next(s["Status"] for s in sessions if s["SessionId"] == response["SessionId"])
        if status == "Terminated" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status in ("Terminated", "Disconnected")


@pytest.mark.slow
@pytest.mark.usefixtures("session_manager_plugin")
def test_real_plugin_smux_mode(ssm_sandbox: EndpointBox, tmp_path: Path) -> None:
    run_plugin(ssm_sandbox, tmp_path)


@pytest.mark.slow
@pytest.mark.usefixtures("session_manager_plugin")
def test_real_plugin_basic_mode(moto_url: str, relay: str, echo_server: tuple[str, int], tmp_path: Path) -> None:
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path / "state", agent_version="3.0.161.0").start()
    try:
        box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
        box.map_host(DB_HOST, DB_PORT, echo_server)
        run_plugin(box, tmp_path)
    finally:
        endpoint.stop()
