"""`invoke doctor`: every prerequisite of the tunnel and ECS Exec chain, each with its fix."""

from __future__ import annotations

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, ops_errors


@task(help={"env": ENV_HELP, "json": "print the results as JSON (one object per check) instead of a table"})
def doctor(c: Context, env: str = "", json: bool = False) -> None:
    """Check local tools, credentials, relay, network, database, IAM, KMS and ECS Exec; exit 1 on any fail."""
    from ops.doctor import format_json, format_table, run_checks  # (heavy; only this task needs it)

    with ops_errors():
        results = run_checks(_common.env(env))
        print(format_json(results) if json else format_table(results))
    if any(r.status == "fail" for r in results):
        raise Exit(code=1)
