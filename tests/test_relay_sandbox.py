"""`invoke relay-restart` and `invoke relay-replace` against the real sandbox (moto, the local endpoint, terraform).

The endpoint's ping is Online only while the moto instance runs; with its agent-boot hook the agent
takes a few seconds after a start to be Online again, so the wait and its progress lines are real.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ops import discovery
from ops.errors import AccountMismatchError
from ops.relay import current_relay, ping_status, restart
from tests.conftest import PROJECT_ROOT
from tests.sandbox_support import Sandbox, error_line
from tests.test_sessions_sandbox import moto, run
from tests.tty_support import run_on_terminal

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


# An agent that does not boot until told (post_agent_boot(box, 0)).
HELD = 86400.0


def post_agent_boot(box: Sandbox, seconds: float) -> None:
    """How long a relay's agent takes to come Online after its instance starts (the endpoint's test hook)."""
    req = urllib.request.Request(f"{box.endpoint_url}/_sandbox/agent-boot", method="POST",  # noqa: S310
                                 data=json.dumps({"seconds": seconds}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback
        pass


@contextmanager
def agent_boot(box: Sandbox, seconds: float) -> Iterator[None]:
    post_agent_boot(box, seconds)
    try:
        yield
    finally:
        post_agent_boot(box, 0)


def state(box: Sandbox, iid: str) -> str:
    inst = moto(box, "ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return str(inst["State"]["Name"])


def test_stopped_relay_is_not_online_and_restart_brings_it_back(sandbox: Sandbox) -> None:
    iid = current_relay(sandbox.cfg).instance_id
    moto(sandbox, "ec2").stop_instances(InstanceIds=[iid])
    assert ping_status(sandbox.cfg, iid) == "ConnectionLost"
    with pytest.raises(discovery.RelayNotReadyError, match="is stopped"):
        discovery.find_relay(sandbox.cfg)
    with agent_boot(sandbox, 3):
        proc = run(sandbox, "relay-restart", "--env", "sandbox", stdin="y\n")
    assert proc.returncode == 0, proc.stderr
    assert f"relay {iid} is Online" in proc.stdout
    assert f"Start the relay {iid} of sandbox in AWS account 123456789012? [y/N]" in proc.stderr
    assert f"waiting for {iid} Online in Session Manager: ConnectionLost" in proc.stderr, "progress while waiting"
    assert discovery.find_relay(sandbox.cfg).instance_id == iid


def test_restart_of_a_running_relay_stops_and_starts_it(sandbox: Sandbox) -> None:
    iid = current_relay(sandbox.cfg).instance_id
    with agent_boot(sandbox, 2):
        proc = run(sandbox, "relay-restart", "--env", "sandbox", "--yes", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert f"relay {iid}: running, Session Manager ping Online, status checks: system ok, instance ok" in err
    assert err.index(f"stopping {iid}") < err.index(f"{iid} stopped: stopped") < err.index(f"starting {iid}")
    assert "Session Manager ping while stopped: ConnectionLost" in err
    assert err.index(f"{iid} running: running") < err.index(f"{iid} Online in Session Manager: Online")
    assert state(sandbox, iid) == "running" and ping_status(sandbox.cfg, iid) == "Online"


def test_declined_restart_and_wrong_account_change_nothing(sandbox: Sandbox) -> None:
    iid = current_relay(sandbox.cfg).instance_id
    proc = run(sandbox, "relay-restart", "--env", "sandbox", stdin="no\n")
    assert proc.returncode == 1
    assert error_line(proc) == "error: relay restart on sandbox cancelled; nothing was changed"
    with pytest.raises(AccountMismatchError):
        restart(dataclasses.replace(sandbox.cfg, account_id="999999999999"), yes=True)
    assert state(sandbox, iid) == "running"


def test_replace_goes_through_terraform_and_waits_for_online(sandbox: Sandbox) -> None:
    from ops import deploy

    old = current_relay(sandbox.cfg).instance_id
    # A "no" at the prompt: tests/test_relay.py (a declined run here cost a plan, ~6 s of CPU).
    # The new relay's agent stays offline until relay-replace says it waits for it (an event, not a timer
    # longer than terraform's create): then it comes Online, and the task must notice.
    waiting = re.compile(r"waiting for i-\S+ Online in Session Manager: ConnectionLost")

    def boot_when_waited_for(line: str) -> None:
        if waiting.search(line):
            post_agent_boot(sandbox, 0)

    with agent_boot(sandbox, HELD):
        proc = run_on_terminal([sys.executable, "-m", "invoke", "relay-replace", "--env", "sandbox"], answer="y\n",
                               cwd=PROJECT_ROOT, env=sandbox.subprocess_env(), timeout=300,
                               on_stderr=boot_when_waited_for)
    assert proc.returncode == 0, proc.stderr
    new = current_relay(sandbox.cfg).instance_id
    assert new != old and state(sandbox, old) == "terminated"
    assert f"relay replaced: {old} -> {new}, Online" in proc.stdout
    assert re.search(r"^\s+REPLACE\s+aws_instance\.", proc.stderr, re.MULTILINE), "the plan names the replacement"
    assert f"waiting for {new} Online in Session Manager: ConnectionLost" in proc.stderr, "progress while waiting"
    assert "Replace the relay (aws_instance." in proc.stderr
    # The Terraform state is the truth: its output names the new relay, and a plan has nothing to do.
    assert deploy.outputs(sandbox.cfg)["relay_instance_id"] == new
    assert deploy.plan(sandbox.cfg, detailed_exitcode=True) == 0
    assert discovery.find_relay(sandbox.cfg).instance_id == new
    # A session through the new relay reaches the database.
    if shutil.which("psql"):
        query = run(sandbox, "psql", "--env", "sandbox", "--command", "select 1 as through_new_relay")
        assert query.returncode == 0 and "through_new_relay" in query.stdout, query.stderr
