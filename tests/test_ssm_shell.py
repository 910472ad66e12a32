"""ECS ExecuteCommand in the sandbox: a local pty process behind the Session Manager shell protocol."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import botocore.exceptions
import pytest

from ops.ssm.client import ShellSession
from tests.ssm_support import EndpointBox

pytest_plugins = ["tests.ssm_fixtures"]


CLUSTER = "bastionless-test"
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/bastionless-test/0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def ecs_box(ssm_sandbox: EndpointBox) -> EndpointBox:
    ssm_sandbox.endpoint.ecs().create_cluster(clusterName=CLUSTER)
    task = {"taskArn": TASK_ARN, "clusterArn": f"arn:aws:ecs:eu-west-1:123456789012:cluster/{CLUSTER}",
            "lastStatus": "RUNNING", "desiredStatus": "RUNNING", "enableExecuteCommand": True,
            "platformVersion": "1.4.0", "group": "service:bastionless-test-sample",
            "containers": [{"name": "app", "containerArn": "arn:aws:ecs:eu-west-1:123456789012:container/x",
                            "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": "RUNNING"}]}]}
    disabled = {**task, "taskArn": TASK_ARN[:-1] + "0", "enableExecuteCommand": False}
    (ssm_sandbox.endpoint.state_dir / "ecs_tasks.json").write_text(json.dumps({"tasks": [task, disabled]}))
    return ssm_sandbox


def exec_shell(box: EndpointBox, command: str, *, task: str = TASK_ARN) -> dict[str, Any]:
    result: dict[str, Any] = box.endpoint.ecs().execute_command(
        cluster=CLUSTER, task=task, container="app", command=command, interactive=True)
    return result


def run_non_interactive(box: EndpointBox, command: str) -> tuple[int, bytes]:
    session = exec_shell(box, command)["session"]
    read_fd, write_fd = os.pipe()

    async def main() -> int:
        shell = ShellSession(stream_url=session["streamUrl"], token=session["tokenValue"],
                             session_id=session["sessionId"], ca_file=box.endpoint.ca_file)
        await shell.start()
        return await asyncio.wait_for(shell.run(stdin_fd=None, stdout_fd=write_fd), 20)

    try:
        code = asyncio.run(main())
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        return code, pipe.read()


def test_command_output_and_exit_status(ecs_box: EndpointBox) -> None:
    code, out = run_non_interactive(ecs_box, "sh -c 'echo hello-from-task; exit 3'")
    assert code == 3
    assert b"hello-from-task" in out


def test_session_recorded_and_terminated(ecs_box: EndpointBox) -> None:
    code, _ = run_non_interactive(ecs_box, "true")
    assert code == 0
    history = ecs_box.endpoint.ssm().describe_sessions(State="History")["Sessions"]
    assert any(s["Target"].startswith(f"ecs:{CLUSTER}_") and s["Status"] == "Terminated" for s in history)


def test_list_and_describe_tasks_include_sandbox_tasks(ecs_box: EndpointBox) -> None:
    ecs = ecs_box.endpoint.ecs()
    arns = ecs.list_tasks(cluster=CLUSTER, serviceName="bastionless-test-sample")["taskArns"]
    assert TASK_ARN in arns
    described = ecs.describe_tasks(cluster=CLUSTER, tasks=[TASK_ARN])
    assert described["tasks"][0]["containers"][0]["managedAgents"][0]["name"] == "ExecuteCommandAgent"
    assert not described["failures"]


def test_exec_disabled_task_is_refused_like_aws(ecs_box: EndpointBox) -> None:
    with pytest.raises(botocore.exceptions.ClientError, match="execute command was not enabled"):
        exec_shell(ecs_box, "/bin/sh", task=TASK_ARN[:-1] + "0")


def test_interactive_pty_window_size_and_ctrl_c(ecs_box: EndpointBox) -> None:
    """Client stdin is a pty (as under a terminal): raw mode, size message, Ctrl-C reaches the remote shell."""
    session = exec_shell(ecs_box, "/bin/sh")["session"]
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    os.set_blocking(out_r, False)
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    collected = bytearray()

    async def read_until(marker: bytes, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while marker not in collected:
            assert time.monotonic() < deadline, collected.decode(errors="replace")
            try:
                collected.extend(os.read(out_r, 65536))
            except BlockingIOError:
                await asyncio.sleep(0.02)

    async def main() -> int:
        shell = ShellSession(stream_url=session["streamUrl"], token=session["tokenValue"],
                             session_id=session["sessionId"], ca_file=ecs_box.endpoint.ca_file)
        await shell.start()
        runner = asyncio.ensure_future(shell.run(stdin_fd=slave, stdout_fd=out_w))
        await asyncio.sleep(0.2)  # raw mode is set with TCSAFLUSH: type only after it
        os.write(master, b"stty size\r")
        await read_until(b"33 101")
        os.write(master, b"sleep 30\r")
        await asyncio.sleep(0.3)
        os.write(master, b"\x03")  # Ctrl-C in raw mode: a byte to the remote pty, which interrupts sleep
        os.write(master, b"echo after-interrupt\r")
        await read_until(b"after-interrupt\r\n")
        os.write(master, b"exit 5\r")
        return await asyncio.wait_for(runner, 10)

    saved = termios.tcgetattr(slave)
    try:
        code = asyncio.run(main())
        assert termios.tcgetattr(slave) == saved  # terminal restored
    finally:
        for fd in (master, slave, out_r, out_w):
            os.close(fd)
    assert code == 5
