"""Test tiers, decided by what a test uses (its fixtures), never by hand; loaded by tests/conftest.py.

- `unit`: no process, no network, no terraform. A guard makes this true: in a unit test, starting a
  process or opening/binding an IP socket fails the test and names the fixture to request instead.
- `integration`: the AWS emulator, the local Session Manager endpoint, PostgreSQL, a synth child,
  CLI subprocesses (any fixture in INTEGRATION_FIXTURES, directly or through another fixture).
- `e2e`: a deployed sandbox or real terraform (any fixture in E2E_FIXTURES).

Every test gets exactly one tier marker, a timeout that matches its tier, and (for `-m "not slow"`,
which older branches still use) `slow` when it is not a unit test. Tests that share an expensive
module or session fixture get an xdist group, so `--dist loadgroup` does not build it twice.

Scheduling (`./dev test` runs 4 workers on 2 cores: most of an e2e or integration test's time is waiting
on terraform's waiters, the agent's pace or PostgreSQL, so two workers left the cores idle ~45 % of the
run): the collection is ordered longest work first (the deployed sandbox's groups, then e2e, then
integration, then unit: the many short unit tests fill the gaps at the end), and xdist keeps that order
(`loadscopereorder` off: its own reordering counts tests per group, which put the single 3-minute e2e
test behind hundreds of unit tests). Tests marked `second_sandbox` (the runbooks: over two minutes of
following them, terraform applies included; the demo) form a second sandbox group: on another worker it
builds a sandbox of its own (~50 s, mostly waiting), so the other sandbox tests do not queue behind them;
on the same worker both share one. Either way a group's tests run one after another on one sandbox.

A new test module needs no edits here when it uses the existing fixtures; a new fixture that starts
something belongs in INTEGRATION_FIXTURES or E2E_FIXTURES (the guard reports it otherwise).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

TIERS = ("unit", "integration", "e2e")

# Fixtures that start a server, a process or a synth child. The fixture closure of a test includes
# the fixtures its fixtures use, so listing the base fixtures is enough.
INTEGRATION_FIXTURES = frozenset({
    "moto_url",          # tests.ssm_fixtures: in-process moto server on a loopback port
    "echo_server",       # tests.ssm_fixtures: TCP echo server
    "moto_server_process",  # tests.tunnel_fixtures: one moto process per session, reset by each world
    "ecs_world",         # tests.ecs_fixtures: the moto process (reset) + endpoint
    "tunnel_world",      # tests.tunnel_fixtures: the moto process (reset) + endpoint
    "tunnel_postgres",   # tests.tunnel_fixtures: PostgreSQL cluster
    "postgres",          # tests.db_fixtures: password-only PostgreSQL cluster
    "synth_dirs",        # tests.stack_fixtures: `cdktf synth` child process (node)
    "cdktf_runtime",     # below: an in-process synth (cdktf runs constructs in a jsii node child)
    "real_io",           # below: a test that starts processes or opens loopback sockets itself
})
E2E_FIXTURES = frozenset({
    "sandbox_session",   # tests.sandbox_fixtures: `invoke sandbox up` + terraform apply, once per session
    "terraform_bin",     # below: a test that runs real terraform
})
# pytest-timeout per tier (seconds, setup + call + teardown). A hang costs this, not 15 minutes.
TIMEOUTS = {"unit": 30, "integration": 240, "e2e": 600}
# Fixtures built once per session that would be built again on every xdist worker touching them.
SESSION_GROUPS = {"sandbox_session": "sandbox", "synth_dirs": "synth"}
SECOND_SANDBOX = "sandbox-2"
# Scheduling order, longest work first (see above); a group's rank is its best test's.
_RANK = {"sandbox": 0, SECOND_SANDBOX: 0, "e2e": 1, "integration": 2, "unit": 3}


def tier_of(fixturenames: Iterable[str], *, slow: bool = False) -> str:
    """The tier of a test with this fixture closure. `slow` (a hand mark some branches still add)
    counts as integration, so an old test is never run as unit without a guard."""
    names = set(fixturenames)
    if names & E2E_FIXTURES:
        return "e2e"
    if names & INTEGRATION_FIXTURES or slow:
        return "integration"
    return "unit"


def tools_required() -> bool:
    """In CI a missing tool fails the run instead of skipping (CI=true, or BASTIONLESS_REQUIRE_TOOLS=1)."""
    return (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("BASTIONLESS_REQUIRE_TOOLS") == "1")


def missing_tool(message: str) -> NoReturn:
    """Skip on a laptop, fail in CI: a required tool that is absent must not turn the suite green."""
    if tools_required():
        pytest.fail(f"{message} (required in CI)", pytrace=False)
    pytest.skip(message)


def require_tool(found: str | Path | None, message: str) -> str:
    """`found` when it is set, else missing_tool(message)."""
    if not found:
        missing_tool(message)
    return str(found)


def needs_tool(name: str, reason: str = "") -> pytest.MarkDecorator:
    """Mark a test that runs the program `name` (psql, pg_dump, tmux, node, ...): where it is not on PATH
    the test skips on a laptop and fails in CI (a `skipif` would turn CI green without it)."""
    return pytest.mark.needs_tool(name, reason=reason or f"{name} is not installed")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        if shutil.which(mark.args[0]) is None:
            missing_tool(mark.kwargs.get("reason") or f"{mark.args[0]} is not installed")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: no process, no network, no terraform (set automatically)")
    config.addinivalue_line("markers", "integration: emulator, endpoint, PostgreSQL, child processes (automatic)")
    config.addinivalue_line("markers", "e2e: a deployed sandbox or real terraform (set automatically)")
    config.addinivalue_line("markers", "xdist_group(name): tests that share an expensive fixture run on one worker")
    config.addinivalue_line("markers", "needs_tool(name, reason): the test runs this program; missing, it skips "
                                       "on a laptop and fails in CI (tests/tiers.py needs_tool)")
    config.addinivalue_line("markers", "second_sandbox: a long sandbox module that runs in the second sandbox group, "
                                       "beside the first (tests/tiers.py)")
    # Keep the collection's order (longest work first, below) instead of xdist's count-per-group order.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# First: pytest-xdist reads the xdist_group marks in its own hook of the same name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        tier = tier_of(names, slow=item.get_closest_marker("slow") is not None)
        item.add_marker(getattr(pytest.mark, tier))
        if tier != "unit" and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUTS[tier]))
        group = _group(item, names, tier)
        if group and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    rank = schedule_ranks([(_group_key(item), next(t for t in TIERS if item.get_closest_marker(t))) for item in items])
    items.sort(key=lambda item: rank[_group_key(item)])  # stable: a module keeps its order


def schedule_ranks(entries: Iterable[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Each xdist work unit's place in the run, from its tests' (group or node id, tier): lower runs first.
    By tier, then, within a tier, the unit with more tests first (a 20-test integration module started
    last was the run's tail)."""
    rank: dict[str, int] = {}
    size: dict[str, int] = {}
    for key, tier in entries:
        rank[key] = min(rank.get(key, len(_RANK)), _RANK.get(key, _RANK[tier]))
        size[key] = size.get(key, 0) + 1
    return {key: (rank[key], -size[key]) for key in rank}


def _group_key(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker and marker.args else item.nodeid


def _group(item: pytest.Item, names: Iterable[str], tier: str) -> str:
    for fixture, group in SESSION_GROUPS.items():
        if fixture in names:
            return SECOND_SANDBOX if group == "sandbox" and item.get_closest_marker("second_sandbox") else group
    # Integration and e2e modules hold module-scoped servers: keep each module on one worker.
    return "" if tier == "unit" else item.nodeid.split("::", 1)[0]


# ---- the unit-tier guard ---------------------------------------------------------------------------

_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _refuse(what: str) -> NoReturn:
    raise RuntimeError(
        f"a unit-tier test {what}. Unit tests run no process and open no network socket; if this test "
        "needs it, request the fixture that provides it (tests/tiers.py: INTEGRATION_FIXTURES, e.g. "
        "`real_io`, or E2E_FIXTURES, e.g. `terraform_bin`) and it moves to that tier")


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    real_connect, real_connect_ex, real_bind = socket.socket.connect, socket.socket.connect_ex, socket.socket.bind

    def popen_init(self: Any, args: Any, *a: Any, **kw: Any) -> None:
        _refuse(f"started a process: {args!r}")

    def checked(real: Any, what: str) -> Any:
        def method(self: socket.socket, address: Any) -> Any:
            if self.family in _IP_FAMILIES:
                _refuse(f"tried to {what} {address!r}")
            return real(self, address)
        return method

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "__init__", popen_init)
        mp.setattr(os, "system", lambda cmd: _refuse(f"ran {cmd!r}"))
        mp.setattr(socket.socket, "connect", checked(real_connect, "connect to"))
        mp.setattr(socket.socket, "connect_ex", checked(real_connect_ex, "connect to"))
        mp.setattr(socket.socket, "bind", checked(real_bind, "bind"))
        yield


# ---- fixtures that declare what a test uses --------------------------------------------------------


@pytest.fixture
def real_io() -> None:
    """Request this when a test starts processes (a CLI subprocess, a PTY shell, psql, terraform
    version) or opens loopback sockets itself: it runs as an integration test."""


@pytest.fixture(scope="session")
def cdktf_runtime() -> None:
    """Request this when a test synthesizes in-process: cdktf's constructs live in a node child (jsii)."""
    import cdktf  # noqa: F401


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    """The terraform binary; request it when a test runs real terraform (that makes it e2e)."""
    return require_tool(shutil.which("terraform"), "terraform is not installed (Terraform >= 1.5 on PATH)")
