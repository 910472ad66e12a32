"""Helpers for the sandbox and deploy tests: run `invoke` as a user would, in a given state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ops.config import EnvConfig
from ops.sandbox import manager, procs
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
