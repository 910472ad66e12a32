"""On-call: runbooks, Session Manager sessions, the audit trail, relay restart and replacement."""

from __future__ import annotations

import json as jsonlib
import sys

from invoke.context import Context
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, VERBOSE_HELP, YES_HELP, ops_errors

SINCE_HELP = "how far back: 30m, 24h, 7d, or a UTC date/time such as 2026-11-29T22:00"


@task(name="runbooks", help={})
def runbooks(c: Context) -> None:
    """List the on-call runbooks (runbooks/*.md) with their one-line purpose."""
    with ops_errors():
        from ops import runbooks as rb

        print(rb.format_index(rb.load_all()))


@task(name="runbook", help={"name": "runbook to print: its name (e.g. relay-unhealthy), number (4) or file name",
                            "env": "print only this environment's escalation contacts (default: every environment's)"})
def runbook(c: Context, name: str, env: str = "") -> None:
    """Print one runbook (see `invoke runbooks` for the names) and who to escalate to."""
    with ops_errors():
        from ops import runbooks as rb
        from ops.config import available_envs, load_env

        print(rb.find(name).for_reading())
        print(rb.format_escalation([load_env(e) for e in ([env] if env else available_envs())]), end="")


@task(name="sessions", help={
    "env": ENV_HELP,
    "all": "also list ended sessions (started within --since)",
    "since": "with --all: " + SINCE_HELP + " (default 24h)",
    "json": "print the sessions as JSON",
})
def sessions(c: Context, env: str = "", all: bool = False, since: str = "24h", json: bool = False) -> None:
    """Active (with --all: also recent) Session Manager sessions to the relay and ECS Exec into the cluster."""
    with ops_errors():
        from ops import sessions as ops_sessions

        cfg = _common.env(env)
        found = ops_sessions.list_sessions(cfg, history=all, since=ops_sessions.parse_since(since) if all else None)
        print(jsonlib.dumps([s.to_dict() for s in found], indent=2) if json else ops_sessions.format_table(found))


@task(name="sessions-terminate", help={
    "env": ENV_HELP,
    "session": "the session id to terminate (from `invoke sessions`)",
    "owner": "terminate every active session of this IAM ARN (a role ARN matches all its assumed-role sessions)",
    "yes": YES_HELP,
})
def sessions_terminate(c: Context, env: str = "", session: str = "", owner: str = "", yes: bool = False) -> None:
    """Terminate one session (--session ID) or all of one owner (--owner ARN); confirms first."""
    with ops_errors():
        from ops import sessions as ops_sessions

        done = ops_sessions.terminate(_common.env(env), session_id=session, owner=owner, yes=yes)
        print(f"terminated {len(done)} session(s)")


@task(name="audit", help={
    "env": ENV_HELP,
    "since": SINCE_HELP + " (default 24h; CloudTrail keeps 90 days)",
    "json": "print the events as JSON",
})
def audit(c: Context, env: str = "", since: str = "24h", json: bool = False) -> None:
    """Who started, resumed or terminated sessions to the relay, and ECS Exec into the cluster (CloudTrail)."""
    with ops_errors():
        from ops import audit as ops_audit
        from ops.sessions import parse_since

        ops_audit.report(_common.env(env), since=parse_since(since), as_json=json, out=sys.stdout)


@task(name="relay-restart", help={
    "env": ENV_HELP,
    "reboot": "reboot the instance instead of stop + start (keeps the host; does not cure a bad host)",
    "timeout": "seconds to wait for each stage (stopped, running, Online in Session Manager)",
    "yes": YES_HELP,
})
def relay_restart(c: Context, env: str = "", reboot: bool = False, timeout: int = 600, yes: bool = False) -> None:
    """Stop and start (or reboot) the relay, then wait until it is Online in Session Manager."""
    with ops_errors():
        from ops import relay

        result = relay.restart(_common.env(env), yes=yes, reboot=reboot, timeout=float(timeout))
        print(f"relay {result.instance_id} is {result.ping_status} ({result.seconds:.0f} s)")


@task(name="relay-replace", help={
    "env": ENV_HELP,
    "timeout": "seconds to wait for the new relay to run and be Online in Session Manager",
    "yes": YES_HELP,
    "verbose": VERBOSE_HELP,
})
def relay_replace(c: Context, env: str = "", timeout: int = 600, yes: bool = False, verbose: bool = False) -> None:
    """Replace the relay through terraform apply -replace, then wait until the new one is Online."""
    with ops_errors():
        from ops import relay

        result = relay.replace(_common.env(env), yes=yes, timeout=float(timeout), verbose=verbose)
        print(f"relay replaced: {result.old_instance_id or 'none'} -> {result.new_instance_id}, "
              f"{result.ping_status} ({result.seconds:.0f} s)")
