"""The offline sandbox: moto (AWS API), a local Session Manager endpoint and PostgreSQL (as RDS)."""

from __future__ import annotations

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from cli._common import VERBOSE_HELP, ops_errors
from ops.facts import SANDBOX_ENV


@task(help={
    "action": "up (start everything and deploy the stack; safe to repeat), status (table of components) or down "
              "(stop everything, remove the sandbox state)",
    "env": "sandbox environment to deploy (an envs/<name>.toml with sandbox = true)",
    "no_deploy": "with up: start the services only; deploy later with `invoke deploy --env sandbox`",
    "moto_port": "with up: port for the AWS API emulator (0 = any free port)",
    "pg_port": "with up: port for the local PostgreSQL (0 = any free port, or the one it had)",
    "endpoint_port": "with up: port for the local Session Manager endpoint (0 = any free port)",
    "verbose": "with up: " + VERBOSE_HELP,
})
def sandbox(c: Context, action: str, env: str = SANDBOX_ENV, no_deploy: bool = False, moto_port: int = 0,
            pg_port: int = 0, endpoint_port: int = 0, verbose: bool = False) -> None:
    """Start, inspect or stop the offline sandbox: `invoke sandbox up|status|down`."""
    from ops.sandbox import manager  # (heavy: TLS, terraform; only this task needs it)

    with ops_errors():
        if action == "up":
            info = manager.up(env=env, deploy=not no_deploy, moto_port=moto_port, pg_port=pg_port,
                              endpoint_port=endpoint_port, verbose=verbose)
            print(manager.format_status(info.components))
        elif action == "status":
            rows = manager.status()
            print(manager.format_status(rows))
            if not all(r.ok for r in rows):
                raise Exit(code=1)
        elif action == "down":
            manager.down()
        else:
            raise Exit(f"error: unknown action {action!r}; next: invoke sandbox up|status|down", code=2)
