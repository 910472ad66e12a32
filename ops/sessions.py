"""Session Manager sessions of an environment: list them, terminate them (one, or all of one owner).

"Of an environment" means: port-forwarding sessions whose target is one of the env's relays (current
or replaced ones) and ECS Exec sessions into the env's cluster (`ecs:<cluster>_<task>_<runtime>`).
The list comes from `ssm:DescribeSessions` (Active, and with `history` the History state too);
terminating calls `ssm:TerminateSession` after the account check and a confirmation.

Owners are IAM ARNs: `arn:aws:iam::<acct>:user/<name>` for IAM users and
`arn:aws:sts::<acct>:assumed-role/<role>/<session name>` for roles (SSO included). `--owner` with a
role ARN (`arn:aws:iam::<acct>:role/<role>`, or the SSO role's name) matches every session of that role.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from ops import aws, deploy
from ops.config import EnvConfig
from ops.discovery import aws_call
from ops.errors import OpsError
from ops.inputs import terminal_safe
from ops.relay import relay_instances

Ask = Callable[[str], str]
ACTIVE_STATES = ("Connected", "Connecting", "Disconnected", "Terminating")
_DURATION_RE = re.compile(r"^(\d+)\s*([mhd])$")


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    target: str
    owner: str
    started: datetime | None
    ended: datetime | None
    reason: str
    status: str
    kind: str  # "relay" or "ecs"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started", "ended"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`30m`, `24h`, `7d`, or an ISO date/time (UTC if no offset) -> an aware UTC datetime."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    match = _DURATION_RE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        units = {"m": "minutes", "h": "hours", "d": "days"}
        return now - timedelta(**{units[unit]: amount})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OpsError(f"--since {text!r} is not a duration or a date",
                       next_step="use e.g. --since 30m, 24h, 7d or 2026-11-29T22:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def cluster_target_prefix(cfg: EnvConfig) -> str:
    """ECS Exec session targets are `ecs:<cluster name>_<task id>_<container runtime id>`."""
    return f"ecs:{cfg.stack_name}_"


def _describe(cfg: EnvConfig, state: str, *, since: datetime | None = None) -> list[dict[str, Any]]:
    ssm = aws.client(cfg, "ssm")
    filters: list[dict[str, str]] = []
    if since is not None:
        filters.append({"key": "InvokedAfter", "value": since.strftime("%Y-%m-%dT%H:%M:%SZ")})
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        kwargs: dict[str, Any] = {"State": state, "MaxResults": 200}
        if filters:
            kwargs["Filters"] = filters
        if token:
            kwargs["NextToken"] = token
        page = aws_call(cfg, "ssm:DescribeSessions", lambda kw=kwargs: ssm.describe_sessions(**kw))  # type: ignore[misc]
        found += page.get("Sessions", [])
        token = page.get("NextToken", "")
        if not token:
            return found


def list_sessions(cfg: EnvConfig, *, history: bool = False, since: datetime | None = None) -> list[SessionInfo]:
    """Active sessions to the env's relays and cluster; with `history`, also ended ones started after `since`."""
    relays = {r.instance_id for r in relay_instances(cfg, include_gone=True)}
    prefix = cluster_target_prefix(cfg)
    raw = _describe(cfg, "Active")
    if history:
        raw += _describe(cfg, "History", since=since)
    seen: set[str] = set()
    result: list[SessionInfo] = []
    for item in raw:
        sid, target = str(item.get("SessionId", "")), str(item.get("Target", ""))
        if sid in seen:
            continue
        kind = "relay" if target in relays else "ecs" if target.startswith(prefix) else ""
        if not kind:
            continue
        started = _when(item.get("StartDate"))
        if history and since is not None and started is not None and started < since and \
                str(item.get("Status")) not in ACTIVE_STATES:
            continue
        seen.add(sid)
        result.append(SessionInfo(session_id=sid, target=target, owner=str(item.get("Owner", "")),
                                  started=started, ended=_when(item.get("EndDate")),
                                  reason=str(item.get("Reason", "") or ""), status=str(item.get("Status", "")),
                                  kind=kind))
    result.sort(key=lambda s: (not s.active, -(s.started.timestamp() if s.started else 0)))
    return result


def owner_matches(owner: str, wanted: str) -> bool:
    """Exact ARN; a role ARN (or bare role name) matches its assumed-role sessions; `*` at the end is a prefix."""
    wanted = wanted.strip()
    if not wanted:
        return False
    if wanted.endswith("*"):
        return owner.startswith(wanted[:-1])
    if owner == wanted:
        return True
    role = re.match(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/(?:.*/)?([^/]+)$", wanted)
    if role:
        part, account, name = role.groups()
        return owner.startswith(f"arn:{part}:sts::{account}:assumed-role/{name}/")
    return False


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def format_table(sessions: Iterable[SessionInfo]) -> str:
    rows = [("session", "owner", "started (UTC)", "status", "target", "reason")]
    for s in sessions:
        rows.append((s.session_id, s.owner, _fmt_time(s.started), s.status,
                     s.target if s.kind == "relay" else f"{s.target} (ECS Exec)", s.reason or "-"))
    if len(rows) == 1:
        return "no sessions"
    # AWS data: no escape sequence or newline reaches the terminal.
    safe = [[terminal_safe(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in safe) for i in range(len(safe[0]) - 1)]
    return "\n".join(("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + "  " + r[-1]).rstrip()
                     for r in safe)


def select_for_termination(sessions: Iterable[SessionInfo], *, session_id: str = "",
                           owner: str = "") -> list[SessionInfo]:
    if bool(session_id) == bool(owner):
        raise OpsError("give exactly one of --session ID or --owner ARN",
                       next_step="invoke sessions --env ENV (lists the ids and owners)")
    active = [s for s in sessions if s.active]
    if session_id:
        return [s for s in active if s.session_id == session_id]
    return [s for s in active if owner_matches(s.owner, owner)]


@aws.runs_as("deployer")
def terminate(cfg: EnvConfig, *, session_id: str = "", owner: str = "", yes: bool = False,
              ask: Ask = deploy.ask_terminal, out: TextIO = sys.stderr) -> list[SessionInfo]:
    """Terminate one active session, or every active session of an owner, after the account check and a
    confirmation. Returns the sessions terminated; raises when none matched."""
    if bool(session_id) == bool(owner):
        raise OpsError("give exactly one of --session ID or --owner ARN",
                       next_step=f"invoke sessions --env {cfg.name} (lists the ids and owners)")
    ident = deploy.guard(cfg, out=out)
    chosen = select_for_termination(list_sessions(cfg), session_id=session_id, owner=owner)
    if not chosen:
        what = f"session {session_id}" if session_id else f"sessions of {owner}"
        raise OpsError(f"no active {what} to the relay or the cluster of {cfg.name}; nothing was terminated",
                       next_step=f"invoke sessions --env {cfg.name} --all (shows ended ones too)")
    out.write(format_table(chosen) + "\n")
    if not yes:
        deploy.confirm(cfg, action=f"Terminate the {len(chosen)} session(s) listed above on", account=ident["Account"],
                ask=ask, what="terminating sessions")
    ssm = aws.client(cfg, "ssm")
    for sess in chosen:
        aws_call(cfg, "ssm:TerminateSession", lambda s=sess: ssm.terminate_session(  # type: ignore[misc]
            SessionId=s.session_id))
        out.write(f"terminated {sess.session_id} ({sess.owner})\n")
    out.flush()
    still = {s.session_id for s in list_sessions(cfg) if s.active}
    left = [s.session_id for s in chosen if s.session_id in still and s.status != "Terminating"]
    if left:
        raise OpsError(f"still active after TerminateSession: {', '.join(left)}",
                       next_step=f"invoke sessions --env {cfg.name}; check your ssm:TerminateSession permission")
    return chosen
