"""Database logins per person, from PostgreSQL's own log (`log_connections = 1`): CloudTrail does not
record IAM database logins, PostgreSQL does. RDS exports the log to CloudWatch Logs
(`/aws/rds/instance/<id>/postgresql`); the sandbox reads its PostgreSQL's log file.

The parser is sans-I/O (lines in, logins out) and accepts RDS's prefix (`%t:%r:%u@%d:[%p]:`) as well as
PostgreSQL's default (`%m [%p] `). The person is found from the DB user in `[[people]]`, and confirmed
by the proxy's mark in application_name (`... (bastionless: alice@example.com)`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops.config import EnvConfig

_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)?(?: ?UTC)?")
_AUTHORIZED = re.compile(r"connection authorized: user=(?P<user>\S+)(?: database=(?P<db>\S+))?"
                         r"(?: application_name=(?P<app>.*?))?(?: SSL enabled.*| GSS .*)?$")
_REFUSED = (re.compile(r'FATAL:\s+PAM authentication failed for user "(?P<user>[^"]+)"'),
            re.compile(r'FATAL:\s+role "(?P<user>[^"]+)" is not permitted to log in'),
            re.compile(r'FATAL:\s+password authentication failed for user "(?P<user>[^"]+)"'))
_MARK = re.compile(r"\(bastionless: (?P<who>[^)]+)\)\s*$")


@dataclass(frozen=True)
class DbLogin:
    time: datetime | None
    db_user: str
    database: str
    application: str
    person: str  # from [[people]]; "" for the master user or roles we do not manage
    refused: str = ""  # why PostgreSQL refused it, for failed logins


def parse(lines: Iterable[str], *, people: dict[str, str]) -> list[DbLogin]:
    """`people`: db_user -> identity."""
    found: list[DbLogin] = []
    for line in lines:
        stamp = _TIME.match(line)
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) if stamp else None
        ok = _AUTHORIZED.search(line)
        if ok:
            app = (ok.group("app") or "").strip()
            mark = _MARK.search(app)
            user = ok.group("user")
            found.append(DbLogin(time=when, db_user=user, database=ok.group("db") or "", application=app,
                                 person=people.get(user, mark.group("who") if mark else "")))
            continue
        for pattern in _REFUSED:
            bad = pattern.search(line)
            if bad:
                user = bad.group("user")
                found.append(DbLogin(time=when, db_user=user, database="", application="",
                                     person=people.get(user, ""), refused=line[bad.start():].split(":", 1)[1].strip()))
                break
    return found


def sandbox_log() -> Path | None:
    """The sandbox PostgreSQL's log file, from the sandbox state, if the sandbox runs one."""
    import json

    from ops import aws

    try:
        state = json.loads((aws.state_dir() / "sandbox.json").read_text())
        return Path(state["postgres_server"]["root"]) / "postgres.log"
    except (OSError, KeyError, TypeError, ValueError):
        return None


def read_lines(cfg: EnvConfig, *, since: datetime, identifier: str = "") -> list[str]:
    """The env's PostgreSQL log lines about connections since `since`."""
    if cfg.sandbox:
        path = sandbox_log()
        return path.read_text(errors="replace").splitlines() if path and path.is_file() else []
    from ops import aws

    logs = aws.client(cfg, "logs")
    group = f"/aws/rds/instance/{identifier or cfg.stack_name}/postgresql"
    lines: list[str] = []
    kwargs = {"logGroupName": group, "startTime": int(since.timestamp() * 1000),
              "filterPattern": '?"connection authorized" ?"authentication failed" ?"not permitted to log in"'}
    for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
        lines += [str(e.get("message", "")) for e in page.get("events", [])]
    return lines


def logins(cfg: EnvConfig, *, since: datetime, lines: list[str] | None = None) -> list[DbLogin]:
    people = {p.db_user: p.identity for p in cfg.people}
    found = parse(read_lines(cfg, since=since) if lines is None else lines, people=people)
    return [entry for entry in found if entry.time is None or entry.time >= since]


def format_table(entries: Iterable[DbLogin]) -> str:
    rows = [("time (UTC)", "person", "db user", "database", "result")]
    for e in entries:
        rows.append((e.time.strftime("%Y-%m-%d %H:%M:%S") if e.time else "?", e.person or "-", e.db_user,
                     e.database or "-", f"refused: {e.refused}" if e.refused else f"ok ({e.application or '-'})"))
    if len(rows) == 1:
        return "database logins: none in this period"
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < 4 else c for i, c in enumerate(r)) for r in rows)
