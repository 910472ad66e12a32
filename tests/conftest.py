"""Shared test set-up: every test runs against its own state dir, never a developer's sandbox."""

from __future__ import annotations

import ast
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The fast provider import (stacks/__init__.py) must be installed before any test module imports a
# provider class, or that import alone takes 20-90 s (the package __init__ loads ~1,500 modules).
import stacks  # noqa: F401

# Fixture modules are imported by other test modules as well as loaded as plugins: rewrite their
# asserts either way, so a failing assert in a fixture shows its values.
pytest.register_assert_rewrite("tests.tunnel_fixtures", "tests.db_fixtures", "tests.ecs_fixtures",
                               "tests.ssm_fixtures", "tests.sandbox_fixtures", "tests.stack_fixtures",
                               "tests.tiers")

# Every fixture module is registered here, once: a fixture name means the same thing in every module.
# tests/tiers.py marks each test unit/integration/e2e from the fixtures it uses.
pytest_plugins = ["tests.tiers", "tests.ssm_fixtures", "tests.tunnel_fixtures", "tests.db_fixtures",
                  "tests.ecs_fixtures", "tests.sandbox_fixtures", "tests.stack_fixtures"]

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
if "BASTIONLESS_PROVIDER_MIRROR" not in os.environ and Path("/opt/tf-plugins").is_dir():
    os.environ["BASTIONLESS_PROVIDER_MIRROR"] = "/opt/tf-plugins"

PROJECT_ROOT = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from ops.config import EnvConfig


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """ast.parse, again when CPython 3.11 reports "AST constructor recursion depth mismatch": its AST state is
    shared by all threads, and another thread of the worker building an AST at the same moment (3.11's traceback
    module parses a source line to place its carets, e.g. when asyncio logs a leftover task) trips the check
    (python/cpython#106905, pytest-dev/pytest#10763). A real error in the source is raised as usual."""
    for _ in range(4):
        try:
            return ast.parse(source, filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    return ast.parse(source, filename)


def plain_sandbox_toml() -> str:
    """envs/sandbox.toml for tests whose "RDS" is a bare PostgreSQL (no RDS front) or none at all: no TLS and
    no [[people]], i.e. an env before anyone has a DB identity (tunnels forward raw bytes, psql and migrate
    are the master user). Tests that want people or TLS add them to this text themselves."""
    text = (PROJECT_ROOT / "envs" / "sandbox.toml").read_text().split("\n[[people]]", 1)[0]
    return text.replace('sslmode = "verify-full"', 'sslmode = "disable"')


def plain_sandbox_env() -> EnvConfig:
    """plain_sandbox_toml() parsed, named `sandbox` (for unit tests that only need an env to describe)."""
    from ops.config import parse_env

    return parse_env("sandbox", plain_sandbox_toml().encode(), PROJECT_ROOT / "envs" / "sandbox.toml")


def stand_in_for_terraform(monkeypatch: pytest.MonkeyPatch, tf: object, plans: Path) -> None:
    """For unit tests of deploy, destroy and relay-replace: the checks before terraform (local tools, the
    account) pass, `tf` stands in for the env's Terraform, and saved plans go to `plans`."""
    from ops import deploy, terraform

    monkeypatch.setattr(deploy, "preflight", lambda cfg: None)
    monkeypatch.setattr(deploy, "guard", lambda cfg, out: {"Account": cfg.account_id})
    monkeypatch.setattr(deploy, "_plan_file", lambda tf_, name: plans / name)
    monkeypatch.setattr(terraform, "for_env", lambda cfg, **kwargs: tf)


def pytest_configure(config: pytest.Config) -> None:
    # A script's `cmd &` (no job control) starts its command with SIGINT ignored, and a CI runner may too;
    # every child inherits that, so the Ctrl-C tests' children never saw their Ctrl-C (six failures in a run
    # started that way). The tests need Ctrl-C as a terminal delivers it: default handling, not blocked.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@pytest.fixture(autouse=True)
def _ctrl_c_left_as_found() -> Iterator[None]:
    """Ctrl-C's handling in this worker is what it was before each test.

    The process's SIGINT disposition and blocked mask are inherited by every child it starts: a test that
    left SIGINT ignored or blocked here would make a later test's child deaf to Ctrl-C (two Ctrl-C tests
    once timed out that way). The test that changed it fails, and the worker gets its handling back.
    """
    handler = signal.getsignal(signal.SIGINT)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = []
    handler_now = signal.getsignal(signal.SIGINT)
    if handler_now != handler:
        changed.append(f"SIGINT handler {handler_now!r} (was {handler!r})")
        signal.signal(signal.SIGINT, handler)
    blocked_now = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if blocked_now != blocked:
        changed.append(f"blocked signals {blocked_now!r} (were {blocked!r})")
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if changed:
        pytest.fail("this test left the worker's Ctrl-C handling changed: " + "; ".join(changed))


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state dir of this test's own (BASTIONLESS_STATE_DIR, for child processes too)."""
    path = tmp_path / "state"
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(path))
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide state dir so a test run never touches `.sandbox/` of the working tree."""
    path = tmp_path_factory.mktemp("state")
    old = os.environ.get("BASTIONLESS_STATE_DIR")
    os.environ["BASTIONLESS_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BASTIONLESS_STATE_DIR", None)
    else:
        os.environ["BASTIONLESS_STATE_DIR"] = old
