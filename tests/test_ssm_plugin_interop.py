"""The real `session-manager-plugin` against the local endpoint: the endpoint speaks the agent's protocol.

AWS's plugin, built unchanged from its public source (../shared/tools in CI; PATH or
BASTIONLESS_SESSION_MANAGER_PLUGIN elsewhere). Skipped with a reason where it is missing, failed in CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ssm_support import (
    DB_HOST,
    DB_PORT,
    REGION,
    EndpointBox,
    EndpointThread,
    echo_once,
    free_port,
    run_plugin_shell,
)

pytest_plugins = ["tests.ssm_fixtures"]


def start_plugin(box: EndpointBox, tmp_path: Path, session_manager_plugin: str
                 ) -> tuple[subprocess.Popen[str], dict[str, Any], int, list[str]]:
    """StartSession to the database host, then the plugin as the AWS CLI runs it; returns the process, the
    StartSession answer, the local port and the plugin's output lines (collected as they come)."""
    local_port = free_port()
    params = {"Target": box.relay, "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
              "Parameters": {"host": [DB_HOST], "portNumber": [str(DB_PORT)], "localPortNumber": [str(local_port)]}}
    response = box.endpoint.ssm().start_session(**params)
    response.pop("ResponseMetadata")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HOME": str(tmp_path),
           "SSL_CERT_FILE": box.endpoint.ca_file}
    # The argv the AWS CLI passes: response JSON, region, operation, profile, request JSON, endpoint URL.
    proc = subprocess.Popen([session_manager_plugin, json.dumps(response), REGION, "StartSession", "",
                             json.dumps(params),
                             box.endpoint.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in stdout), daemon=True).start()
    return proc, response, local_port, lines


def run_plugin(box: EndpointBox, tmp_path: Path, session_manager_plugin: str) -> None:
    proc, response, local_port, lines = start_plugin(box, tmp_path, session_manager_plugin)
    ssm = box.endpoint.ssm()
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
def test_real_plugin_smux_mode(ssm_sandbox: EndpointBox, tmp_path: Path, session_manager_plugin: str) -> None:
    run_plugin(ssm_sandbox, tmp_path, session_manager_plugin)


@pytest.mark.slow
def test_real_plugin_basic_mode(moto_url: str, relay: str, echo_server: tuple[str, int], tmp_path: Path,
                                session_manager_plugin: str) -> None:
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path / "state", agent_version="3.0.161.0").start()
    try:
        box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
        box.map_host(DB_HOST, DB_PORT, echo_server)
        run_plugin(box, tmp_path, session_manager_plugin)
    finally:
        endpoint.stop()


def _exec_session(box: EndpointBox, *, cluster: str, command: str) -> tuple[dict[str, str], str]:
    """An ECS Exec session into a sandbox task of `cluster` (no exec KMS key): (plugin answer, target)."""
    tid = "0123456789abcdef0123456789abcdef"
    task = {"taskArn": f"arn:aws:ecs:{REGION}:123456789012:task/{cluster}/{tid}",
            "clusterArn": f"arn:aws:ecs:{REGION}:123456789012:cluster/{cluster}", "lastStatus": "RUNNING",
            "enableExecuteCommand": True, "containers": [{"name": "app", "runtimeId": f"{tid}-1"}]}
    (box.endpoint.state_dir / "ecs_tasks.json").write_text(json.dumps({"tasks": [task]}))
    ecs = box.endpoint.ecs()
    ecs.create_cluster(clusterName=cluster)
    session = ecs.execute_command(cluster=cluster, task=tid, container="app", interactive=True,
                                  command=command)["session"]
    answer = {"SessionId": session["sessionId"], "TokenValue": session["tokenValue"], "StreamUrl": session["streamUrl"]}
    return answer, f"ecs:{cluster}_{tid}_{tid}-1"


@pytest.mark.slow
def test_real_plugin_shell_without_kms(ssm_sandbox: EndpointBox, tmp_path: Path, session_manager_plugin: str) -> None:
    """ECS Exec without exec KMS through AWS's plugin: the agent skips the handshake and the plugin starts
    the shell on its first output (session/sessionhandler.go ProcessFirstMessage), prints it and exits
    when the command ends."""
    answer, target = _exec_session(ssm_sandbox, cluster="interop", command="sh -c 'echo interop-$((6*7))'")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HOME": str(tmp_path),
           "SSL_CERT_FILE": ssm_sandbox.endpoint.ca_file}
    code, out = run_plugin_shell(session_manager_plugin, answer=answer, region=REGION, target=target,
                                 endpoint_url=ssm_sandbox.endpoint.url, env=env)
    assert code == 0
    assert b"interop-42" in out, out
    assert b"Exiting session with sessionId" in out
    sessions = ssm_sandbox.endpoint.ssm().describe_sessions(State="History")["Sessions"]
    assert any(s["SessionId"] == answer["SessionId"] and s["Status"] == "Terminated" for s in sessions)


@pytest.mark.slow
def test_real_plugin_resumes_after_a_drop(ssm_sandbox: EndpointBox, tmp_path: Path,
                                          session_manager_plugin: str) -> None:
    """A dropped data channel: the plugin calls ResumeSession itself and carries on with the same session."""
    proc, response, local_port, lines = start_plugin(ssm_sandbox, tmp_path, session_manager_plugin)
    try:
        deadline = time.monotonic() + 20
        while not any("opened for sessionId" in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        blob = os.urandom(50_000)
        assert echo_once(local_port, blob) == blob
        stats = f"/_sandbox/sessions/{response['SessionId']}"
        # The plugin exits ("Cannot perform start session: ... broken pipe") when a write of its own hits
        # the dead socket, as it does on AWS; a drop while it is idle is the case it resumes from.
        deadline = time.monotonic() + 10
        while ssm_sandbox.endpoint.get(stats)["unacked"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ssm_sandbox.endpoint.post(f"{stats}/drop")
        # Likewise a new local connection before it has reconnected: wait for its second websocket.
        deadline = time.monotonic() + 30
        while ssm_sandbox.endpoint.get(stats)["websockets"] < 2:
            assert time.monotonic() < deadline, "\n".join(lines)
            time.sleep(0.05)
        assert echo_once(local_port, blob) == blob
        assert proc.poll() is None, lines
        status = ssm_sandbox.endpoint.get(f"/_sandbox/sessions/{response['SessionId']}")["status"]
        assert status == "Connected"
        events = [e for e in ssm_sandbox.endpoint.ssm().describe_sessions(State="Active")["Sessions"]
                  if e["SessionId"] == response["SessionId"]]
        assert events, "the same session is still the active one"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
