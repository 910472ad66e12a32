"""Per-person database access: roles from `[[people]]` of the env file."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, YES_HELP, ops_errors


@task(name="db-access", help={
    "env": ENV_HELP,
    "dry_run": "only show the difference between the database's roles and [[people]]; change nothing",
    "yes": YES_HELP,
    "transport": "auto (session-manager-plugin if installed, else the built-in client), plugin, or native",
    "reason": "why you change access; sent as the StartSession reason (session history, CloudTrail)",
})
def db_access(c: Context, env: str = "", dry_run: bool = False, yes: bool = False, transport: str = "auto",
              reason: str = "") -> None:
    """Show, then apply, the database roles [[people]] asks for (LOGIN, rds_iam, group); removed people lose LOGIN."""
    with ops_errors():
        from ops.dbaccess import db_access as run

        run(_common.env(env), apply_changes=not dry_run, yes=yes, transport=transport, reason=reason)
