"""`invoke sessions` and `invoke sessions-terminate` against the real sandbox, as a user types them.

Sessions of other people are opened with moto IAM users of their own (the endpoint names the owner
after the caller's access key, as AWS does); they stay Connected until terminated, like a session whose
client holds its websocket.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from ops.errors import AccountMismatchError
from ops.facts import ECS_TASKS_FILE
from tests.conftest import PROJECT_ROOT
from tests.sandbox_support import Sandbox, error_line
from tests.tty_support import run_on_terminal

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow

PORT_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"


@dataclass(frozen=True)
class IamUser:
    name: str
    arn: str
    key: str

    def client(self, box: Sandbox, service: str) -> Any:
        return boto3.client(service, region_name=box.cfg.region,  # type: ignore[call-overload]
                            endpoint_url=box.endpoint_url, aws_access_key_id=self.key,
                            aws_secret_access_key="sandbox-not-checked")


def moto(box: Sandbox, service: str) -> Any:
    return boto3.client(service, region_name=box.cfg.region, endpoint_url=box.moto_url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def person(box: Sandbox, prefix: str = "alice") -> IamUser:
    """A new IAM user with an access key in the sandbox's moto."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    iam = moto(box, "iam")
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    # IAM is enforced in the sandbox: these people are allowed sessions of their own (like admins).
    iam.put_user_policy(UserName=name, PolicyName="sessions", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
            "ssm:StartSession", "ssm:TerminateSession", "ssm:ResumeSession", "ecs:ExecuteCommand"]}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    return IamUser(name=name, arn=arn, key=key)


def relay_id(box: Sandbox) -> str:
    from ops.relay import current_relay

    return current_relay(box.cfg).instance_id


def open_relay_session(box: Sandbox, who: IamUser, reason: str) -> str:
    """StartSession to the relay as `who`, the way `invoke tunnel` starts one."""
    from ops.discovery import find_database

    db = find_database(box.cfg)
    return str(who.client(box, "ssm").start_session(
        Target=relay_id(box), DocumentName=PORT_DOCUMENT, Reason=reason,
        Parameters={"host": [db.address], "portNumber": [str(db.port)], "localPortNumber": ["5433"]})["SessionId"])


def open_exec_session(box: Sandbox, who: IamUser) -> str:
    """ECS ExecuteCommand into the sample service's task as `who`."""
    tasks = json.loads((box.state_dir / ECS_TASKS_FILE).read_text())["tasks"]
    resp = who.client(box, "ecs").execute_command(cluster=box.cfg.stack_name, task=tasks[0]["taskArn"],
                                                  container="app", command="/bin/sh", interactive=True)
    return str(resp["session"]["sessionId"])


def active_ids(box: Sandbox) -> set[str]:
    from ops.sessions import list_sessions

    return {s.session_id for s in list_sessions(box.cfg) if s.active}


def run(box: Sandbox, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    if stdin:
        # A confirmation: typed on a terminal, since a piped answer is refused (ops.confirm).
        return run_on_terminal([sys.executable, "-m", "invoke", *args], answer=stdin, cwd=PROJECT_ROOT,
                               env=box.subprocess_env(), timeout=300)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, input=stdin, env=box.subprocess_env())


def test_sessions_lists_active_sessions_with_owner_reason_and_status(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    relay_sid = open_relay_session(sandbox, alice, "INC-11 look at orders")
    exec_sid = open_exec_session(sandbox, alice)
    try:
        proc = run(sandbox, "sessions", "--env", "sandbox")
        assert proc.returncode == 0, proc.stderr
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(relay_sid))
        assert alice.arn in line and "Connected" in line and "INC-11 look at orders" in line
        assert relay_id(sandbox) in line
        assert any(ln.startswith(exec_sid) and "(ECS Exec)" in ln for ln in proc.stdout.splitlines())
        listed = json.loads(run(sandbox, "sessions", "--env", "sandbox", "--json").stdout)
        mine = {s["session_id"]: s for s in listed if s["owner"] == alice.arn}
        assert set(mine) == {relay_sid, exec_sid}
        assert mine[relay_sid]["kind"] == "relay" and mine[exec_sid]["kind"] == "ecs"
        assert mine[relay_sid]["started"] and mine[relay_sid]["ended"] is None
    finally:
        ssm = moto_ssm(sandbox)
        for sid in (relay_sid, exec_sid):
            ssm.terminate_session(SessionId=sid)
    history = run(sandbox, "sessions", "--env", "sandbox", "--all", "--since", "1h")
    assert history.returncode == 0, history.stderr
    ended = [ln for ln in history.stdout.splitlines() if ln.startswith(relay_sid)]
    assert ended and "Terminated" in ended[0]
    assert relay_sid not in run(sandbox, "sessions", "--env", "sandbox").stdout


def moto_ssm(box: Sandbox) -> Any:
    """ssm client of the default sandbox user, through the endpoint."""
    return boto3.client("ssm", region_name=box.cfg.region, endpoint_url=box.endpoint_url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_terminate_by_owner_ends_only_that_owners_sessions(sandbox: Sandbox) -> None:
    alice, bob = person(sandbox), person(sandbox, "bob")
    alices = {open_relay_session(sandbox, alice, "INC-12 a"), open_exec_session(sandbox, alice)}
    bobs = open_relay_session(sandbox, bob, "INC-12 b")
    try:
        proc = run(sandbox, "sessions-terminate", "--env", "sandbox", "--owner", alice.arn, stdin="y\n")
        assert proc.returncode == 0, proc.stderr
        assert "terminated 2 session(s)" in proc.stdout
        assert "[y/N]" in proc.stderr and "matches sandbox.toml" in proc.stderr
        for sid in alices:
            assert f"terminated {sid}" in proc.stderr
        active = active_ids(sandbox)
        assert not alices & active
        assert bobs in active
    finally:
        moto_ssm(sandbox).terminate_session(SessionId=bobs)


def test_terminate_one_session_by_id_with_yes(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    keep, end = open_relay_session(sandbox, alice, "keep"), open_relay_session(sandbox, alice, "end")
    try:
        proc = run(sandbox, "sessions-terminate", "--env", "sandbox", "--session", end, "--yes")
        assert proc.returncode == 0, proc.stderr
        active = active_ids(sandbox)
        assert end not in active and keep in active
    finally:
        moto_ssm(sandbox).terminate_session(SessionId=keep)


def test_a_declined_confirmation_terminates_nothing(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    sid = open_relay_session(sandbox, alice, "INC-13")
    try:
        proc = run(sandbox, "sessions-terminate", "--env", "sandbox", "--owner", alice.arn, stdin="n\n")
        assert proc.returncode == 1
        assert error_line(proc) == "error: terminating sessions on sandbox cancelled; nothing was changed"
        assert sid in active_ids(sandbox)
        closed = run(sandbox, "sessions-terminate", "--env", "sandbox", "--owner", alice.arn)  # stdin closed
        assert closed.returncode == 1 and "needs confirmation and stdin is not a terminal" in error_line(closed)
        # A piped "y" is refused too: one mechanism, a terminal answer or --yes.
        piped = subprocess.run([sys.executable, "-m", "invoke", "sessions-terminate", "--env", "sandbox", "--owner",
                                alice.arn], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                               input="y\n", env=sandbox.subprocess_env())
        assert piped.returncode == 1 and "a piped answer is not accepted" in error_line(piped)
        assert sid in active_ids(sandbox)
    finally:
        moto_ssm(sandbox).terminate_session(SessionId=sid)


def test_nothing_to_terminate_and_bad_flags_are_one_line_with_the_fix(sandbox: Sandbox) -> None:
    nobody = run(sandbox, "sessions-terminate", "--env", "sandbox", "--owner", "arn:aws:iam::123456789012:user/nobody",
                 "--yes")
    assert nobody.returncode == 1
    assert error_line(nobody) == ("error: no active sessions of arn:aws:iam::123456789012:user/nobody to the relay or "
                                  "the cluster of sandbox; nothing was terminated; next: invoke sessions --env sandbox "
                                  "--all (shows ended ones too)")
    both = run(sandbox, "sessions-terminate", "--env", "sandbox", "--owner", "x", "--session", "y")
    assert both.returncode == 1 and "exactly one of --session ID or --owner ARN" in error_line(both)


def test_the_account_is_checked_before_anything_is_terminated(sandbox: Sandbox) -> None:
    from ops.sessions import terminate

    alice = person(sandbox)
    sid = open_relay_session(sandbox, alice, "INC-14")
    try:
        other = dataclasses.replace(sandbox.cfg, account_id="999999999999")
        with pytest.raises(AccountMismatchError):
            terminate(other, owner=alice.arn, yes=True)
        assert sid in active_ids(sandbox)
    finally:
        moto_ssm(sandbox).terminate_session(SessionId=sid)
