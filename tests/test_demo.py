"""The demo runs the commands a user types, stops at the first failure but still cleans up."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytest

from ops import demo
from ops.errors import CommandFailedError


def _titles(report: demo.DemoReport) -> list[str]:
    return [r.step.title for r in report.results]


def test_every_step_runs_and_the_summary_lists_them() -> None:
    seen: list[Sequence[str]] = []
    out = io.StringIO()
    report = demo.run_demo(runner=lambda argv: seen.append(argv) or 0, out=out)
    assert report.ok
    assert [tuple(a) for a in seen] == [s.argv for s in demo.steps(keep=False)]
    assert seen[-1][-2:] == ("sandbox", "down")
    assert "Summary of the sandbox demo" in out.getvalue()
    assert out.getvalue().rstrip().splitlines()[-1].split()[-1] == "ok"


def test_a_failure_skips_later_steps_but_still_cleans_up() -> None:
    def runner(argv: Sequence[str]) -> int:
        return 4 if "migrate" in argv else 0

    out = io.StringIO()
    with pytest.raises(CommandFailedError) as exc:
        demo.run_demo(runner=runner, out=out)
    assert exc.value.returncode == 4
    assert exc.value.message == "demo step failed: migrate the database to head"
    assert exc.value.next_step == "invoke migrate --env sandbox --yes"
    assert "FAILED (4)" in out.getvalue()
    ran = [line for line in out.getvalue().splitlines() if line.startswith("$ ")]
    assert ran[-2:] == ["$ invoke tunnel-close --env sandbox", "$ invoke sandbox down"]
    assert not any("psql" in line for line in ran)


def test_keep_leaves_the_sandbox_running() -> None:
    assert all("down" not in s.argv for s in demo.steps(keep=True))


def test_every_demo_command_is_a_real_task_with_real_flags() -> None:
    from tests.test_cli import _namespace, task_arguments

    ns = _namespace()
    for step in demo.steps(keep=False):
        argv = list(step.argv[3:])
        name = argv[0]
        assert name in ns.task_names, f"demo step {step.title!r} calls unknown task {name!r}"
        args = task_arguments(ns[name])
        flags = {f"--{a.name.replace('_', '-')}" for a in args}
        flags |= {f"-{n}" for a in args for n in a.names if len(n) == 1}
        used = {a for a in argv[1:] if a.startswith("-")}
        assert used <= flags, f"demo step {step.title!r}: {sorted(used - flags)} not flags of {name}"
