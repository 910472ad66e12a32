"""Who opened sessions to the relay and the cluster, when, from where and why: CloudTrail management events.

`cloudtrail:LookupEvents` (the last 90 days of management events, no trail needed) is asked for each
of StartSession, ResumeSession, TerminateSession (event source ssm.amazonaws.com) and ExecuteCommand
(ecs.amazonaws.com). An event belongs to the environment when its target is one of the env's relays
(current or replaced), or its cluster is the env's cluster; a Resume/Terminate event belongs when its
session does (found among the start events, or else in the session history).

The reason: StartSession records `requestParameters.reason`; ExecuteCommand has no reason field, so
`invoke ecs-shell --reason` sends it in the user agent (`bastionless-reason/...`), which CloudTrail records.

In the sandbox these events are emulated by the local Session Manager endpoint
(ops/sandbox/ssm_endpoint.py): it records an event for every call it serves, because moto's
LookupEvents does not return them. The output says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import botocore.exceptions

from ops import aws
from ops.config import EnvConfig
from ops.discovery import aws_call
from ops.errors import CredentialsError
from ops.inputs import terminal_safe
from ops.relay import relay_instances
from ops.sessions import cluster_target_prefix

SSM_EVENTS = ("StartSession", "ResumeSession", "TerminateSession")
ECS_EVENTS = ("ExecuteCommand",)
EVENT_NAMES = SSM_EVENTS + ECS_EVENTS
REASON_AGENT = "bastionless-reason/"
SANDBOX_NOTE = ("sandbox: these CloudTrail events are emulated by the local Session Manager endpoint "
                "(ops/sandbox/ssm_endpoint.py); moto's LookupEvents does not record Session Manager calls")


@dataclass(frozen=True)
class AuditEvent:
    time: datetime
    event: str
    caller: str
    source_ip: str
    target: str
    session_id: str
    reason: str
    event_id: str
    error: str = ""  # CloudTrail's errorCode when AWS refused the call

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat()
        return data


def _lookup(cfg: EnvConfig, name: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    trail = aws.client(cfg, "cloudtrail")
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        kwargs: dict[str, Any] = {"LookupAttributes": [{"AttributeKey": "EventName", "AttributeValue": name}],
                                  "StartTime": start, "EndTime": end, "MaxResults": 50}
        if token:
            kwargs["NextToken"] = token
        try:
            page = aws_call(cfg, f"cloudtrail:LookupEvents ({name})",
                            lambda kw=kwargs: trail.lookup_events(**kw))  # type: ignore[misc]
        except CredentialsError as exc:
            if "denied" not in exc.message:
                raise
            # LookupEvents is account-wide, so developers do not have it: auditors do.
            raise CredentialsError(f"cloudtrail:LookupEvents was denied: invoke audit needs the auditor role "
                                   f"{aws.role_name(cfg, 'auditor')}",
                                   next_step=f"assume arn:aws:iam::{cfg.account_id}:role/"
                                             f"{aws.role_name(cfg, 'auditor')}, then retry") from None
        found += page.get("Events", [])
        token = page.get("NextToken", "")
        if not token:
            return found


def reason_from_agent(user_agent: str) -> str:
    for part in user_agent.split():
        if part.startswith(REASON_AGENT):
            return part[len(REASON_AGENT):].replace("_", " ")
    return ""


def parse_event(raw: dict[str, Any]) -> AuditEvent:
    """One LookupEvents entry (its CloudTrailEvent JSON holds the details) as an AuditEvent."""
    try:
        detail = json.loads(raw.get("CloudTrailEvent") or "{}")
    except ValueError:
        detail = {}
    ident = detail.get("userIdentity") or {}
    req = detail.get("requestParameters") or {}
    resp = detail.get("responseElements") or {}
    name = str(raw.get("EventName") or detail.get("eventName") or "")
    when = raw.get("EventTime")
    if not isinstance(when, datetime):
        when = datetime.fromisoformat(str(detail.get("eventTime", "1970-01-01T00:00:00Z")).replace("Z", "+00:00"))
    session = str(resp.get("sessionId") or req.get("sessionId") or (resp.get("session") or {}).get("sessionId") or "")
    if name == "ExecuteCommand":
        cluster = str(req.get("cluster") or "").rsplit("/", 1)[-1]
        task = str(req.get("task") or "").rsplit("/", 1)[-1]
        target = f"{cluster}/{task}/{req.get('container') or ''}".strip("/")
        reason = reason_from_agent(str(detail.get("userAgent", "")))
    else:
        target = str(req.get("target") or "")
        reason = str(req.get("reason") or "")
    return AuditEvent(time=when.astimezone(UTC), event=name, caller=str(ident.get("arn") or raw.get("Username") or ""),
                      source_ip=str(detail.get("sourceIPAddress") or ""), target=target, session_id=session,
                      reason=reason, event_id=str(raw.get("EventId") or detail.get("eventID") or ""),
                      error=str(detail.get("errorCode") or ""))


@aws.runs_as("auditor")
def audit(cfg: EnvConfig, *, since: datetime, until: datetime | None = None) -> list[AuditEvent]:
    """The env's session events between `since` and `until` (now), oldest first."""
    until = until or datetime.now(UTC)
    relays = {r.instance_id for r in relay_instances(cfg, include_gone=True)}
    events: list[AuditEvent] = []
    for name in EVENT_NAMES:
        events += [parse_event(e) for e in _lookup(cfg, name, since, until)]
    ours: set[str] = set()
    kept: list[AuditEvent] = []
    for ev in events:
        if ev.event == "StartSession" and ev.target in relays:
            ours.add(ev.session_id)
            kept.append(ev)
        elif ev.event == "ExecuteCommand" and ev.target.split("/", 1)[0] == cfg.stack_name:
            ours.add(ev.session_id)
            kept.append(ev)
    unknown = {ev.session_id for ev in events if ev.event in ("ResumeSession", "TerminateSession")
               and ev.session_id not in ours}
    if unknown:
        ours |= _history_sessions(cfg, unknown, relays)
    kept += [ev for ev in events if ev.event in ("ResumeSession", "TerminateSession") and ev.session_id in ours]
    kept.sort(key=lambda e: e.time)
    return kept


def _history_sessions(cfg: EnvConfig, ids: set[str], relays: set[str]) -> set[str]:
    """Of `ids` (sessions started before the window), those whose target is the env's relay or cluster."""
    ssm = aws.client(cfg, "ssm")
    prefix = cluster_target_prefix(cfg)
    found: set[str] = set()
    for sid in sorted(ids):
        for state in ("Active", "History"):
            page = aws_call(cfg, "ssm:DescribeSessions", lambda st=state, s=sid: ssm.describe_sessions(  # type: ignore[misc]
                State=st, Filters=[{"key": "SessionId", "value": s}]))
            for item in page.get("Sessions", []):
                target = str(item.get("Target", ""))
                if target in relays or target.startswith(prefix):
                    found.add(sid)
    return found


def format_table(events: Iterable[AuditEvent]) -> str:
    rows = [("time (UTC)", "event", "caller", "source IP", "target", "session", "reason")]
    for ev in events:
        name = f"{ev.event} (refused: {ev.error})" if ev.error else ev.event
        rows.append((ev.time.strftime("%Y-%m-%d %H:%M:%SZ"), name, ev.caller, ev.source_ip or "-",
                     ev.target or "-", ev.session_id or "-", ev.reason or "-"))
    if len(rows) == 1:
        return "no session events in that period"
    # AWS data: no escape sequence or newline reaches the terminal.
    safe = [[terminal_safe(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in safe) for i in range(len(safe[0]) - 1)]
    return "\n".join(("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + "  " + r[-1]).rstrip()
                     for r in safe)


def format_json(events: Iterable[AuditEvent], *, emulated: bool) -> str:
    return json.dumps({"emulated": emulated, "events": [e.to_dict() for e in events]}, indent=2)


def report(cfg: EnvConfig, *, since: datetime, as_json: bool = False, out: TextIO = sys.stdout) -> list[AuditEvent]:
    events = audit(cfg, since=since)
    if as_json:
        out.write(format_json(events, emulated=cfg.sandbox) + "\n")
    else:
        out.write(f"session events for {cfg.name} since {since.strftime('%Y-%m-%d %H:%M:%SZ')} "
                  f"(relay and cluster {cfg.stack_name})\n")
        out.write(format_table(events) + "\n")
        if cfg.sandbox:
            out.write(SANDBOX_NOTE + "\n")
        _db_logins(cfg, since=since, out=out)
    return events


def _db_logins(cfg: EnvConfig, *, since: datetime, out: TextIO) -> None:
    """Database logins per person (PostgreSQL's log; CloudTrail does not record IAM DB logins)."""
    from ops import dblogins
    from ops.errors import OpsError

    try:
        entries = dblogins.logins(cfg, since=since)
    except (OpsError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        out.write(f"database logins: not available ({exc})\n")
        return
    out.write(f"database logins for {cfg.name} (PostgreSQL log, log_connections)\n")
    out.write(dblogins.format_table(entries) + "\n")
