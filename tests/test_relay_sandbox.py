"""`invoke relay-restart` against the real sandbox (moto, the local endpoint).

The endpoint's ping is Online only while the moto instance runs; with its agent-boot hook the agent
takes a few seconds after a start to be Online again, so the wait and its progress lines are real.
`invoke relay-replace` (terraform's replacement, the state afterwards) is proven by following runbook 4
(tests/test_runbooks_sandbox.py: check_relay), its declined prompt by tests/test_relay.py.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ops import discovery
from ops.errors import AccountMismatchError
from ops.relay import current_relay, ping_status, restart
from tests.sandbox_support import Sandbox, error_line
from tests.test_sessions_sandbox import moto, run

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


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
