"""Run a task in-process, as `invoke ...` would: invoke's own Program with the real task namespace
(tasks.ns), so parsing, help and the one-line errors are the real ones, without a Python child
(~0.3-1 s each). Real subprocess tests stay for exit codes, signals and --background.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import pytest
from invoke import Program

from tests.conftest import PROJECT_ROOT


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one line a failed task prints."""
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, f"expected exactly one error line, got:\n{self.stderr}"
        return lines[0]


def run_invoke(*args: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               stdin: str = "", **env: str) -> CliResult:
    """`invoke *args` in this process; `env` is set for the call only (monkeypatch undoes it)."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT))
    import tasks

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = 0
    # invoke pops each entry of a task's `help` while it builds the task's arguments: put them back, or
    # every later in-process run (and tests/test_cli.py's help check) sees flags without help.
    helps = {name: dict(tasks.ns[name].help) for name in tasks.ns.task_names}
    try:
        Program(namespace=tasks.ns, name="invoke", binary="invoke").run(["invoke", *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for name, help_ in helps.items():
            tasks.ns[name].help = help_
    out = capsys.readouterr()
    return CliResult(returncode=code, stdout=out.out, stderr=out.err)
