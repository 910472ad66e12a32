"""Helpers for the sandbox and deploy tests: run `invoke` as a user would, in a given state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.config import EnvConfig
from ops.sandbox import manager, procs
from ops.terraform import MIRROR_ENV
from tests.conftest import PROJECT_ROOT
from tests.tty_support import run_on_terminal


def invoke(*args: str, state: Path, stdin: str | None = None, timeout: float = 600,
           **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "BASTIONLESS_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1", **env}
    if stdin:
        # A confirmation: typed on a terminal, since a piped answer is refused (ops.confirm).
        return run_on_terminal([sys.executable, "-m", "invoke", *args], answer=stdin, cwd=PROJECT_ROOT, env=full,
                               timeout=timeout)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, env=full, capture_output=True,
                          text=True, input=stdin if stdin is not None else "", timeout=timeout, check=False)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed task prints (invoke's Exit message on stderr)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"expected exactly one error line, got:\n{proc.stderr}"
    return lines[0]


@dataclass(frozen=True)
class Sandbox:
    cfg: EnvConfig
    state_dir: Path
    moto_url: str
    endpoint_url: str
    pg_port: int
    log: str  # what `up` printed
    up_lines: tuple[str, ...] = ()  # the same, its non-empty lines
    # Checks that end the deployed stack's life (the e2e module's destroy): run right after the last test of
    # this worker that uses the sandbox, or at the end of the session (tests/sandbox_fixtures.py).
    at_end: list[Callable[[Sandbox], None]] = field(default_factory=list)
    # "destroyed" once they ran: a later test that uses the sandbox deploys the stack again first.
    life: set[str] = field(default_factory=set)

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "BASTIONLESS_STATE_DIR": str(self.state_dir), "PYTHONUNBUFFERED": "1", **extra}


def assert_nothing_running(records: list[procs.ProcRecord]) -> None:
    """No process of the list alive and none of their ports listening."""
    alive = [r.pid for r in records if procs.is_alive(r)]
    assert not alive, f"sandbox processes still running: {alive}"
    listening = [r.port for r in records if r.port and procs.listening(r.port)]
    assert not listening, f"sandbox ports still listening: {listening}"


def records_in(state_dir: Path) -> list[procs.ProcRecord]:
    data = procs.read_json(state_dir / manager.STATE_FILE) or {}
    return [procs.ProcRecord.from_json(data[k]) for k in manager.PROCESS_KEYS if isinstance(data.get(k), dict)]


def activated_env(state: Path) -> dict[str, str]:
    """What `. .venv/bin/activate` leaves in a fresh shell: no ./dev exports, no mirror variable."""
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items()
           # COLUMNS: bash sets it without exporting it, so a newcomer's `invoke` does not see it (CI's does).
           if k not in (MIRROR_ENV, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "PYTHONPATH", "NO_COLOR",
                        "COLUMNS")}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv_bin.parent),
               BASTIONLESS_STATE_DIR=str(state))
    return env


def invoke_activated(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """`invoke ARGS` from the activated venv's PATH; its non-empty lines. Never escape codes (not a terminal)."""
    proc = subprocess.run(["invoke", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=900, check=False)
    text = proc.stdout + proc.stderr
    assert "\x1b" not in text, f"escape codes in non-terminal output:\n{text}"
    return proc.returncode, [ln for ln in text.splitlines() if ln.strip()]
