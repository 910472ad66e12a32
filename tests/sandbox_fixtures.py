"""The real sandbox, once per test session: `pytest_plugins = ["tests.sandbox_fixtures"]`.

`sandbox_session` runs `invoke sandbox up` as a newcomer would (moto, the Session Manager endpoint,
PostgreSQL, the RDS front, terraform apply of the sandbox stack) and `invoke db-access` (the people's
roles) in a state dir of its own. The checks registered in `at_end` (the e2e module's destroy) run in the
teardown of the last test of the worker's run of sandbox tests (the tests that use it are consecutive:
one xdist group, or the front of a run without xdist), not at the end of the session: there the ~30 s
destroy was the whole run's tail while the other workers had finished. A test that needs the sandbox
after that (a second group given to the same worker later) gets the stack deployed again. At the end of
the session: `down()`, then no process of it runs and none of its ports listens.

Tests use the function fixture `sandbox`: it points BASTIONLESS_STATE_DIR at the sandbox's state
dir for the duration of the test (child processes see it too, through the environment), so tests
that need an empty state dir are unaffected. Treat the deployed stack as shared: do not destroy it.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops.config import load_env
from ops.dbaccess import db_access
from ops.sandbox import manager
from ops.terraform import discovered_mirror
from tests.sandbox_support import Sandbox, activated_env, assert_nothing_running, invoke_activated, records_in
from tests.tiers import TIMEOUTS, missing_tool

ENV = "sandbox"


@contextmanager
def _with_state_dir(path: Path) -> Iterator[None]:
    old = os.environ.get("BASTIONLESS_STATE_DIR")
    os.environ["BASTIONLESS_STATE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BASTIONLESS_STATE_DIR", None)
        else:
            os.environ["BASTIONLESS_STATE_DIR"] = old


_built: list[Path] = []  # the sandbox this worker built, if any


_boxes: list[Sandbox] = []  # ... and its Sandbox, once built


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The last test of a worker's session also carries the session fixtures' teardown: where this worker
    built a sandbox, that is `down` (and the destroy check, if no test ran it yet), so that test gets the
    e2e tier's timeout (a unit test's 30 s cut the destroy short). Before pytest-timeout reads the marker:
    the outermost wrapper."""
    if nextitem is None and _built:
        item.add_marker(pytest.mark.timeout(TIMEOUTS["e2e"]), append=False)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the function fixtures' teardown of the last consecutive test that uses the sandbox: the checks
    that end the stack's life (a failure there is this test's teardown error)."""
    yield
    uses = "sandbox_session" in getattr(item, "fixturenames", ())
    next_uses = nextitem is not None and "sandbox_session" in getattr(nextitem, "fixturenames", ())
    if uses and not next_uses and _boxes and nextitem is not None:
        _end_of_life(_boxes[0])


def _end_of_life(box: Sandbox) -> None:
    checks, box.at_end[:] = list(box.at_end), []
    if not checks:
        return
    box.life.add("destroyed")
    with _with_state_dir(box.state_dir):
        for check in checks:
            check(box)


@pytest.fixture(scope="session")
def sandbox_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    if discovered_mirror() is None:
        missing_tool("no provider mirror at a usual place (/opt/tf-plugins, ...): a newcomer's first run needs one")
    state_dir = tmp_path_factory.mktemp("sandbox")
    _built.append(state_dir)
    out = io.StringIO()
    box: Sandbox | None = None
    try:
        # Built as a newcomer does it (README): `invoke sandbox up` from the activated venv, no mirror variable;
        # tests/test_sandbox_e2e.py checks what it printed.
        code, lines = invoke_activated(activated_env(state_dir), "sandbox", "up")
        assert code == 0, "`invoke sandbox up` failed:\n" + "\n".join(lines)
        with _with_state_dir(state_dir):
            info = manager.up(env=ENV, deploy=True, out=out)  # all up already: only reads what runs where
            # What a user does next (README): the env's people get their database roles, so tasks run as
            # the first of them (alice) through the auth proxy, as in the demo.
            db_access(load_env(ENV), yes=True, transport="native", report=lambda line: print(line, file=out))
        box = Sandbox(cfg=load_env(ENV), state_dir=state_dir, moto_url=info.moto_url, endpoint_url=info.endpoint_url,
                      pg_port=info.pg_port, log="\n".join(lines), up_lines=tuple(lines))
        _boxes.append(box)
        yield box
    except BaseException:
        # `down` removes the state dir's files: keep the services' logs of a failed set-up for the report.
        kept = state_dir.with_name(f"{state_dir.name}-logs")
        kept.mkdir(exist_ok=True)
        for log in state_dir.glob("*.log"):
            shutil.copy2(log, kept / log.name)
        print(f"sandbox set-up failed; the services' logs are kept in {kept}", file=sys.stderr)
        raise
    finally:
        records = records_in(state_dir)
        try:
            if box is not None:
                _end_of_life(box)  # when the last test that used it did not (it was the session's last)
        finally:
            with _with_state_dir(state_dir):
                manager.down(out=io.StringIO())
            assert_nothing_running(records)


@pytest.fixture
def sandbox(sandbox_session: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(sandbox_session.state_dir))
    if "destroyed" in sandbox_session.life:
        _deploy_again(sandbox_session)
    return sandbox_session


def _deploy_again(box: Sandbox) -> None:
    """The stack was destroyed by the end-of-life checks and a later test (another group given to this
    worker) needs it: deploy it and give the people their roles again, as the set-up did."""
    out = io.StringIO()
    with _with_state_dir(box.state_dir):
        manager.up(env=ENV, deploy=True, out=out)
        db_access(load_env(ENV), yes=True, transport="native", report=lambda line: print(line, file=out))
    box.life.discard("destroyed")
