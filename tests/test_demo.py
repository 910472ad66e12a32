"""The demo runs the commands a user types, stops at the first failure but still cleans up."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from ops import demo, tunnels_state
from ops.config import load_env
from ops.errors import CommandFailedError
from ops.sandbox import manager, procs
from tests.conftest import PROJECT_ROOT
from tests.sandbox_support import Sandbox


def _titles(report: demo.DemoReport) -> list[str]:
    return [r.step.title for r in report.results]


def test_every_step_runs_and_the_summary_lists_them() -> None:
    seen: list[Sequence[str]] = []
    out = io.StringIO()
    report = demo.run_demo(runner=lambda argv: seen.append(argv) or 0, out=out, port=5433, was_running=lambda: False)
    assert report.ok
    assert [tuple(a) for a in seen] == [s.argv for s in demo.steps(keep=False)]
    assert seen[-1][-2:] == ("sandbox", "down")
    assert "Summary of the sandbox demo" in out.getvalue()
    assert out.getvalue().rstrip().splitlines()[-1].split()[-1] == "ok"


@pytest.mark.usefixtures("real_io")
def test_a_failure_skips_later_steps_but_still_cleans_up() -> None:
    def runner(argv: Sequence[str]) -> int:
        return 4 if "migrate" in argv else 0

    out = io.StringIO()
    with pytest.raises(CommandFailedError) as exc:
        demo.run_demo(runner=runner, out=out, was_running=lambda: False)
    assert exc.value.returncode == 4
    assert exc.value.message == "demo step failed: migrate the database to head (as alice, no password)"
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


def test_the_tunnel_and_dbeaver_steps_share_the_chosen_port() -> None:
    chosen = {s.argv[3]: s.argv for s in demo.steps(keep=False, port=6001)}
    tunnel = list(chosen["tunnel"])
    assert tunnel[tunnel.index("--local-port") + 1] == "6001"
    dbeaver = list(chosen["dbeaver"])
    assert dbeaver[dbeaver.index("--port") + 1] == "6001"


@pytest.mark.usefixtures("real_io")
def test_a_busy_usual_port_makes_the_demo_pick_a_free_one() -> None:
    usual = load_env("sandbox").tunnel.local_port
    with _listening(usual):
        port = demo.tunnel_port()
        assert port != usual and procs.port_free(port)


@contextmanager
def _listening(port: int) -> Iterator[None]:
    """Hold `port` on loopback like another tunnel or a local PostgreSQL would (if it is not held already)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            pass  # someone else holds it already: just as busy
        yield
    finally:
        sock.close()


# The second sandbox's group (tests/tiers.py): the demo runs on a sandbox that is already up, as a user's
# second `./dev demo` does, so it leaves it running for the group's other tests. Starting a sandbox from
# nothing with `invoke sandbox up`, the demo's first step, is what building that sandbox does.
@pytest.mark.second_sandbox
def test_the_demo_passes_with_the_usual_tunnel_port_taken(sandbox: Sandbox) -> None:
    """`./dev demo` is `invoke demo` after the set-up: run it for real with 5433 busy."""
    env = {**os.environ, "BASTIONLESS_STATE_DIR": str(sandbox.state_dir), "PYTHONUNBUFFERED": "1"}
    with _listening(load_env("sandbox").tunnel.local_port):
        proc = subprocess.run([sys.executable, "-m", "invoke", "demo"], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=540, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert proc.stdout.rstrip().endswith("stop it with `invoke sandbox down`."), output
    total = [line for line in proc.stdout.splitlines() if line.startswith("total ")]
    assert total and total[-1].split()[-1] == "ok", output
    # The sandbox lists people: the demo's psql is alice, with no password, and db-access broke the glass.
    assert "you are alice in the database" in output
    assert re.search(r"^ alice +\| ", proc.stdout, re.MULTILINE), output
    assert "*** BREAK-GLASS: db-access on sandbox" in output
    assert "\x1b" not in output, "not a terminal: no escape codes"
    # It was running before the demo: the user's sandbox is left as it was found, its tunnel closed.
    assert "The sandbox is already running: the demo uses it and leaves it running." in output
    assert "$ invoke sandbox down" not in output
    assert manager.running()
    assert [t.env for t in tunnels_state.list_tunnels()] == []


def test_a_sandbox_that_was_running_is_left_running() -> None:
    seen: list[Sequence[str]] = []
    out = io.StringIO()
    demo.run_demo(runner=lambda argv: seen.append(argv) or 0, out=out, port=5433, was_running=lambda: True)
    assert [tuple(a) for a in seen] == [s.argv for s in demo.steps(keep=True)]
    assert "already running: the demo uses it and leaves it running" in out.getvalue()
    assert out.getvalue().rstrip().endswith("stop it with `invoke sandbox down`.")
