"""Every task a user can type has a summary line and help for every flag, and errors are one clean line."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from invoke import Argument, Collection, Exit, Task

from cli._common import ops_errors
from ops.errors import CommandFailedError, ConfigError
from tests.conftest import PROJECT_ROOT


def _namespace() -> Collection:
    sys.path.insert(0, str(PROJECT_ROOT))
    import tasks

    return tasks.ns


def task_arguments(task: Task) -> list[Argument]:  # type: ignore[type-arg]
    """A task's Arguments without side effects: invoke pops entries from `task.help` while building them."""
    probe = copy.copy(task)
    probe.help = dict(task.help)
    return probe.get_arguments()


def _tasks() -> list[tuple[str, Task]]:  # type: ignore[type-arg]
    ns = _namespace()
    return sorted((name, ns[name]) for name in ns.task_names)


def test_namespace_is_flat_and_non_empty() -> None:
    names = [n for n, _ in _tasks()]
    assert names, "tasks.py found no tasks in cli/"
    assert all("." not in n for n in names), names


@pytest.mark.parametrize(("name", "task"), _tasks())
def test_every_task_documents_itself_and_every_flag(name: str, task: Task) -> None:  # type: ignore[type-arg]
    doc = (task.__doc__ or "").strip()
    assert doc, f"task {name} has no docstring (its first line is the --list summary)"
    missing = [a.name for a in task_arguments(task) if not a.help]
    assert not missing, f"task {name}: no help= for {missing}"


def test_ops_error_becomes_one_line_with_next_step() -> None:
    with pytest.raises(Exit) as exc, ops_errors():
        raise ConfigError("envs/x.toml: field y is wrong; fix it", next_step="invoke validate --env x")
    assert exc.value.message == "error: envs/x.toml: field y is wrong; fix it; next: invoke validate --env x"
    assert exc.value.code == 1


def test_child_exit_code_is_propagated() -> None:
    with pytest.raises(Exit) as exc, ops_errors():
        raise CommandFailedError("terraform apply failed", returncode=3)
    assert exc.value.code == 3


@pytest.mark.usefixtures("real_io")
def test_unknown_env_is_one_line_and_non_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "cost", "--env", "nope"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "unknown environment 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
