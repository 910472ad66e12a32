"""ECS Exec: an interactive shell (or one command) in a running Fargate task."""

from __future__ import annotations

import sys

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, ops_errors


@task(name="ecs-shell", help={
    "env": ENV_HELP,
    "service": "ECS service whose RUNNING tasks to choose from (default: the sample service, or the only one)",
    "task": "task id or ARN (required when several tasks run and stdin is not a terminal)",
    "container": "container name (default: the only one, else [ecs] default_container, else you are asked)",
    "command": "command to run in the container (default: [ecs] shell_command, /bin/sh)",
    "reason": "why you open the shell (sent in the ExecuteCommand user agent, which CloudTrail records)",
    "transport": "auto (plugin in AWS when installed, else native), native, or plugin",
})
def ecs_shell(c: Context, env: str = "", service: str = "", task: str = "", container: str = "", command: str = "",
              reason: str = "", transport: str = "auto") -> None:
    """Open a shell in a running ECS task over Session Manager (checks ECS Exec prerequisites first)."""
    from ops.ecs_exec import ecs_shell as _ecs_shell  # (heavy; only this task needs it)

    with ops_errors():
        cfg = _common.env(env)
        code = _ecs_shell(cfg, service=service, task=task, container=container, command=command, reason=reason,
                          transport=transport,  # type: ignore[arg-type]
                          log=lambda line: print(line, file=sys.stderr))
    if code:
        raise Exit(code=code)
