"""The sandbox demo: every user-facing command, offline, then a summary."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from cli._common import ops_errors


@task(help={"keep": "leave the sandbox running afterwards (stop it with `invoke sandbox down`)"})
def demo(c: Context, keep: bool = False) -> None:
    """Run the whole flow on the offline sandbox: up, deploy, doctor, tunnel, migrate, psql, DBeaver, ECS shell."""
    from ops.demo import run_demo  # (heavy: the sandbox manager; only this task needs it)

    with ops_errors():
        run_demo(keep=keep)
