"""`invoke audit` against the real sandbox: the emulated CloudTrail events of the local Session Manager endpoint.

Also checks the emulation itself through boto3's cloudtrail client (one lookup attribute, time range,
paging), since `invoke audit` in prod calls the same API on AWS.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from tests.sandbox_support import Sandbox
from tests.test_sessions_sandbox import moto, moto_ssm, open_exec_session, open_relay_session, person, relay_id, run

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


def events(box: Sandbox, since: str = "1h") -> list[dict[str, Any]]:
    proc = run(box, "audit", "--env", "sandbox", "--since", since, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["emulated"] is True
    return list(data["events"])


def test_audit_shows_who_when_where_why_for_starts_terminates_and_exec(sandbox: Sandbox) -> None:
    alice, oncall = person(sandbox), person(sandbox, "oncall")
    before = datetime.now(UTC) - timedelta(seconds=2)
    sid = open_relay_session(sandbox, alice, "INC-21 refund check")
    exec_sid = open_exec_session(sandbox, alice)
    alice.client(sandbox, "ssm").resume_session(SessionId=sid)  # what a tunnel does after a network blip
    oncall.client(sandbox, "ssm").terminate_session(SessionId=sid)
    moto_ssm(sandbox).terminate_session(SessionId=exec_sid)
    found = [e for e in events(sandbox) if e["session_id"] in (sid, exec_sid)]
    by = {(e["event"], e["session_id"]): e for e in found}
    start = by[("StartSession", sid)]
    assert start["caller"] == alice.arn and start["source_ip"] == "127.0.0.1"
    assert start["target"] == relay_id(sandbox) and start["reason"] == "INC-21 refund check"
    assert datetime.fromisoformat(start["time"]) >= before
    assert by[("ResumeSession", sid)]["caller"] == alice.arn
    term = by[("TerminateSession", sid)]
    assert term["caller"] == oncall.arn and datetime.fromisoformat(term["time"]) >= datetime.fromisoformat(
        start["time"])
    ex = by[("ExecuteCommand", exec_sid)]
    assert ex["caller"] == alice.arn and ex["target"].startswith(f"{sandbox.cfg.stack_name}/")
    assert ("TerminateSession", exec_sid) in by
    table = run(sandbox, "audit", "--env", "sandbox", "--since", "1h")
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if sid in ln and "StartSession" in ln)
    assert alice.arn in line and "127.0.0.1" in line and "INC-21 refund check" in line
    assert "emulated by the local Session Manager endpoint" in table.stdout


def test_ecs_shell_reason_reaches_the_audit(sandbox: Sandbox) -> None:
    proc = run(sandbox, "ecs-shell", "--env", "sandbox", "--command", "echo audited", "--reason", "INC-22 env check")
    assert proc.returncode == 0, proc.stderr
    assert "audited" in proc.stdout
    execs = [e for e in events(sandbox, "10m") if e["event"] == "ExecuteCommand" and e["reason"] == "INC-22 env check"]
    # IAM is enforced in the sandbox: ecs-shell runs as the developer role, as on AWS.
    assert len(execs) == 1 and execs[0]["caller"].endswith(":assumed-role/bastionless-sandbox-developer/engineer")


def test_a_refused_start_is_recorded_with_its_error(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    ec2 = moto(sandbox, "ec2")
    relay = relay_id(sandbox)
    ec2.stop_instances(InstanceIds=[relay])
    try:
        with pytest.raises(Exception, match="TargetNotConnected"):
            open_relay_session(sandbox, alice, "INC-23 while down")
    finally:
        ec2.start_instances(InstanceIds=[relay])
    refused = [e for e in events(sandbox, "10m") if e["caller"] == alice.arn]
    assert [(e["event"], e["error"], e["reason"]) for e in refused] == [
        ("StartSession", "TargetNotConnected", "INC-23 while down")]


def test_the_window_excludes_older_events(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    sid = open_relay_session(sandbox, alice, "INC-24")
    moto_ssm(sandbox).terminate_session(SessionId=sid)
    later = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
    assert events(sandbox, later) == []
    empty = run(sandbox, "audit", "--env", "sandbox", "--since", later)
    assert "no session events in that period" in empty.stdout
    bad = run(sandbox, "audit", "--env", "sandbox", "--since", "yesterday")
    assert bad.returncode == 1 and "--since 'yesterday' is not a duration or a date" in bad.stderr


def test_a_terminate_of_a_session_started_before_the_window_is_still_attributed(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    sid = open_relay_session(sandbox, alice, "INC-26 long session")
    time.sleep(1.1)
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1.1)
    moto_ssm(sandbox).terminate_session(SessionId=sid)
    found = [(e["event"], e["caller"]) for e in events(sandbox, since) if e["session_id"] == sid]
    assert found == [("TerminateSession", "arn:aws:sts::123456789012:user/moto")], "found via the session history"


def test_lookup_events_emulation_speaks_the_cloudtrail_api(sandbox: Sandbox) -> None:
    alice = person(sandbox)
    sids = [open_relay_session(sandbox, alice, f"INC-25 #{i}") for i in range(3)]
    for sid in sids:
        moto_ssm(sandbox).terminate_session(SessionId=sid)
    trail = boto3.client("cloudtrail", region_name=sandbox.cfg.region, endpoint_url=sandbox.endpoint_url,
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    start = datetime.now(UTC) - timedelta(minutes=5)
    pages = trail.get_paginator("lookup_events").paginate(
        LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": alice.name}], StartTime=start,
        PaginationConfig={"PageSize": 2})
    got = [e for page in pages for e in page["Events"]]
    assert [e["EventName"] for e in got] == ["StartSession"] * 3
    assert got[0]["EventTime"] >= got[-1]["EventTime"], "newest first, as CloudTrail returns them"
    detail = json.loads(got[0]["CloudTrailEvent"])
    assert detail["eventSource"] == "ssm.amazonaws.com" and detail["userIdentity"]["arn"] == alice.arn
    assert detail["responseElements"]["tokenValue"] == "Value hidden due to security reasons."
    assert got[0]["Resources"] == [{"ResourceType": "AWS::EC2::Instance", "ResourceName": relay_id(sandbox)}]
    with pytest.raises(Exception, match="InvalidLookupAttributes"):
        trail.lookup_events(LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": "a"},
                                              {"AttributeKey": "EventName", "AttributeValue": "b"}])
