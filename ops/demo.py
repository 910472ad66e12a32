"""The sandbox demo: the commands a user types, run one after another, then a summary.

Each step runs the real `invoke` task in a child process, exactly as a person would type it, so the
demo shows (and checks) the user-facing commands rather than library calls behind them.

The demo's tunnel listens on the env's usual port when it is free and on any free port otherwise
(another tunnel or a local PostgreSQL often holds 5433); the DBeaver step is told the same port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rich.text import Text

from ops.aws import state_dir
from ops.config import PROJECT_ROOT, load_env
from ops.console import console
from ops.errors import CommandFailedError
from ops.sandbox import procs

ENV = "sandbox"


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...]
    # A step whose failure does not stop the demo (clean-up steps).
    always: bool = False


@dataclass
class StepResult:
    step: Step
    returncode: int
    seconds: float


@dataclass
class DemoReport:
    results: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.returncode == 0 for r in self.results)

    def summary(self) -> str:
        width = max((len(r.step.title) for r in self.results), default=10)
        lines = ["", "Summary of the sandbox demo", "-" * (width + 24)]
        for r in self.results:
            status = "ok" if r.returncode == 0 else f"FAILED ({r.returncode})"
            lines.append(f"{r.step.title:<{width}}  {r.seconds:7.1f} s  {status}")
        total = sum(r.seconds for r in self.results)
        lines.append("-" * (width + 24))
        lines.append(f"{'total':<{width}}  {total:7.1f} s  {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def dbeaver_workspace() -> Path:
    """The demo writes DBeaver's config into the sandbox, never into the user's real workspace."""
    return state_dir() / "dbeaver-workspace"


def tunnel_port() -> int:
    """The sandbox env's tunnel port if free, else any free port."""
    usual = load_env(ENV).tunnel.local_port
    return usual if usual and procs.port_free(usual) else procs.free_port()


def you() -> str:
    """Who the demo's commands are in the database: the sandbox's first person (ops/sandbox/identities.py)."""
    people = load_env(ENV).people
    return people[0].db_user if people else load_env(ENV).database.username


def steps(*, keep: bool, port: int = 5433) -> list[Step]:
    invoke = (sys.executable, "-m", "invoke")
    me = you()
    run: list[Step] = [
        Step("start the sandbox (moto, PostgreSQL, RDS front, Session Manager endpoint)", (*invoke, "sandbox", "up")),
        Step("deploy the sandbox stack with terraform", (*invoke, "deploy", "--env", ENV, "--yes")),
        Step("show the stack outputs", (*invoke, "outputs", "--env", ENV)),
        Step("preflight: doctor", (*invoke, "doctor", "--env", ENV)),
        Step("database roles for [[people]] (break-glass: the master user)", (*invoke, "db-access", "--env", ENV,
                                                                             "--yes")),
        Step(f"open a tunnel in the background (auth proxy: you are {me})",
             (*invoke, "tunnel", "--env", ENV, "--background", "--local-port", str(port), "--reason", "sandbox demo")),
        Step("list running tunnels", (*invoke, "tunnels")),
        Step(f"migrate the database to head (as {me}, no password)", (*invoke, "migrate", "--env", ENV, "--yes")),
        Step("migration status", (*invoke, "migrate-status", "--env", ENV)),
        Step(f"query with psql: you are {me} in the database",
             (*invoke, "psql", "--env", ENV, "-c", "select current_user, version_num from alembic_version")),
        Step("write a DBeaver connection (sandbox workspace)", (*invoke, "dbeaver", "--env", ENV, "--port", str(port),
                                                                "--workspace", str(dbeaver_workspace()))),
        Step("run a command in the Fargate task (ECS Exec)", (*invoke, "ecs-shell", "--env", ENV, "--command",
                                                              "echo hello from the task")),
        Step("who opened sessions: audit", (*invoke, "audit", "--env", ENV, "--since", "1h")),
        Step("close the tunnel", (*invoke, "tunnel-close", "--env", ENV), always=True),
    ]
    if not keep:
        run.append(Step("stop the sandbox", (*invoke, "sandbox", "down"), always=True))
    return run


Runner = Callable[[Sequence[str]], int]


def _run_child(argv: Sequence[str]) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.call(list(argv), cwd=PROJECT_ROOT, env=env)


def _sandbox_running() -> bool:
    from ops.sandbox import manager  # (heavy: terraform, boto3; the unit tests pass their own answer)

    return manager.running()


def run_demo(*, keep: bool = False, runner: Runner = _run_child, out: TextIO = sys.stdout,
             port: int | None = None, was_running: Callable[[], bool] = _sandbox_running) -> DemoReport:
    """Run every step; after a failure, only the clean-up steps still run. Raises when any step failed.

    `port`: the tunnel's local port (default: tunnel_port()). A sandbox that was running before the demo
    is the user's: the demo uses it and leaves it running, as if `keep` was given.
    """
    report = DemoReport()
    failed = False
    view = console(out)
    theirs = was_running()
    if theirs:
        view.print(Text("The sandbox is already running: the demo uses it and leaves it running.", style="bold"),
                   soft_wrap=True)
    keep = keep or theirs
    for step in steps(keep=keep, port=tunnel_port() if port is None else port):
        if failed and not step.always:
            continue
        view.print()
        view.print(Text(f"==> {step.title}", style="bold"), soft_wrap=True)
        view.print(Text(f"$ {_display(step.argv)}"), soft_wrap=True)
        out.flush()
        started = time.monotonic()
        try:
            code = runner(step.argv)
        except KeyboardInterrupt:
            code = 130
        report.results.append(StepResult(step, code, time.monotonic() - started))
        failed = failed or code != 0
    out.write(report.summary() + "\n")
    if keep and report.ok:
        out.write("\nThe sandbox is still running: try `invoke tunnel --env sandbox`; "
                  "stop it with `invoke sandbox down`.\n")
    if not report.ok:
        first = next(r for r in report.results if r.returncode != 0)
        raise CommandFailedError(f"demo step failed: {first.step.title}", returncode=first.returncode,
                                 next_step=_display(first.step.argv))
    return report


def _display(argv: Sequence[str]) -> str:
    # Show the command as the user would type it.
    if len(argv) > 2 and argv[1:3] == ("-m", "invoke"):
        argv = ("invoke", *argv[3:])
    return " ".join(a if a and " " not in a else repr(a) for a in argv)
