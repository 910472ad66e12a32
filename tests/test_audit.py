"""Audit: CloudTrail events as LookupEvents returns them, parsed into who/when/where/why (no AWS)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ops.audit import AuditEvent, format_json, format_table, parse_event, reason_from_agent

WHEN = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def lookup_entry(name: str, detail: dict[str, object]) -> dict[str, object]:
    return {"EventId": "e1", "EventName": name, "EventTime": WHEN, "Username": "alice",
            "CloudTrailEvent": json.dumps(detail)}


def test_start_session_event() -> None:
    ev = parse_event(lookup_entry("StartSession", {
        "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/Eng/alice"},
        "sourceIPAddress": "203.0.113.7",
        "requestParameters": {"target": "i-0abc", "documentName": "AWS-StartPortForwardingSessionToRemoteHost",
                              "reason": "INC-7 data fix"},
        "responseElements": {"sessionId": "alice-0123", "tokenValue": "Value hidden due to security reasons."}}))
    assert ev == AuditEvent(time=WHEN, event="StartSession", caller="arn:aws:sts::1:assumed-role/Eng/alice",
                            source_ip="203.0.113.7", target="i-0abc", session_id="alice-0123",
                            reason="INC-7 data fix", event_id="e1")


def test_a_refused_call_shows_its_error_code() -> None:
    ev = parse_event(lookup_entry("StartSession", {
        "userIdentity": {"arn": "arn:aws:iam::1:user/a"}, "requestParameters": {"target": "i-1", "reason": "r"},
        "errorCode": "TargetNotConnected", "errorMessage": "i-1 is not connected"}))
    assert ev.error == "TargetNotConnected" and ev.session_id == ""
    assert "StartSession (refused: TargetNotConnected)" in format_table([ev])


def test_terminate_and_execute_command_events() -> None:
    term = parse_event(lookup_entry("TerminateSession", {
        "userIdentity": {"arn": "arn:aws:iam::1:user/oncall"}, "requestParameters": {"sessionId": "alice-0123"},
        "responseElements": {"sessionId": "alice-0123"}}))
    assert (term.event, term.session_id, term.caller, term.reason) == (
        "TerminateSession", "alice-0123", "arn:aws:iam::1:user/oncall", "")
    ex = parse_event(lookup_entry("ExecuteCommand", {
        "userIdentity": {"arn": "arn:aws:iam::1:user/bob"},
        "userAgent": "Boto3/1.35 md/x bastionless-reason/INC-9_debug",
        "requestParameters": {"cluster": "bastionless-prod", "task": "abc", "container": "app", "command": "/bin/sh"},
        "responseElements": {"session": {"sessionId": "bob-1", "tokenValue": "HIDDEN_DUE_TO_SECURITY_REASONS"}}}))
    assert (ex.target, ex.session_id, ex.reason) == ("bastionless-prod/abc/app", "bob-1", "INC-9 debug")


def test_missing_username_and_broken_detail_fall_back() -> None:
    ev = parse_event({"EventName": "StartSession", "EventTime": WHEN, "Username": "alice", "CloudTrailEvent": "{"})
    assert ev.caller == "alice" and ev.target == "" and ev.time == WHEN


def test_reason_from_agent() -> None:
    assert reason_from_agent("aws-cli/2 bastionless-reason/CHG-1_migrate_now x") == "CHG-1 migrate now"
    assert reason_from_agent("aws-cli/2") == ""


def test_outputs_never_hold_the_session_token() -> None:
    ev = parse_event(lookup_entry("StartSession", {
        "userIdentity": {"arn": "arn:aws:iam::1:user/a"}, "requestParameters": {"target": "i-1"},
        "responseElements": {"sessionId": "s", "tokenValue": "REAL-TOKEN", "streamUrl": "wss://x"}}))
    assert "REAL-TOKEN" not in format_table([ev]) and "REAL-TOKEN" not in format_json([ev], emulated=False)
    assert json.loads(format_json([ev], emulated=True))["emulated"] is True
    assert format_table([]) == "no session events in that period"
