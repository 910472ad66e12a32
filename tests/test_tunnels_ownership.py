"""tunnel-close signals only our own process (pid AND start time); a killed tunnel's sessions are reported as
orphans and ended by tunnel-close; a TerminateSession that fails is reported, never swallowed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ops import tunnels_state
from ops.config import ENVS_DIR
from ops.errors import OpsError
from ops.sandbox.procs import process_start_time

pytestmark = pytest.mark.slow  # starts a stand-in process


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line even says "tunnel": only its start time tells it is not ours."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tunnel"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_recycled_pid_is_never_signalled(state_dir: Path, stranger: subprocess.Popen[bytes]) -> None:
    started = process_start_time(stranger.pid)
    assert started is not None
    # The record of a tunnel that died; the kernel has since given its pid to `stranger`.
    record = tunnels_state.TunnelRecord(env="a", pid=stranger.pid, pid_started=started - 3600, local_port=5433)
    tunnels_state._write(tunnels_state.state_path("a"), record)
    assert not tunnels_state.is_ours(record)
    with pytest.raises(OpsError, match="no tunnel to a is running"):
        tunnels_state.close("a", timeout=1)
    assert stranger.poll() is None, "tunnel-close signalled a process that is not ours"
    assert tunnels_state.list_tunnels() == []


def test_claim_records_the_start_time_and_close_stops_our_own(state_dir: Path,
                                                               stranger: subprocess.Popen[bytes]) -> None:
    record = tunnels_state.claim(tunnels_state.TunnelRecord(env="a", pid=stranger.pid, local_port=5433))
    assert abs(record.pid_started - (process_start_time(stranger.pid) or 0)) < 2.0
    assert tunnels_state.is_ours(record)
    tunnels_state.close("a", timeout=5)
    assert stranger.wait(timeout=10) is not None
    assert not tunnels_state.state_path("a").exists()


def test_a_killed_tunnels_sessions_are_reported_and_a_failed_terminate_is_not_swallowed(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass", "tunnel"])
    dead.wait()
    record = tunnels_state.TunnelRecord(env="staging", pid=dead.pid, pid_started=1.0, local_port=5433,
                                        sessions=("alice-0123456789abcdef0",),
                                        env_file=str(ENVS_DIR / "staging.toml"))
    tunnels_state._write(tunnels_state.state_path("staging"), record)
    assert tunnels_state.list_tunnels() == []
    (orphan,) = tunnels_state.list_orphans()
    assert orphan.sessions == ("alice-0123456789abcdef0",)
    # AWS does not answer: ending the session fails, and tunnel-close says so (one line, the session named).
    for key, value in (("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_ACCESS_KEY_ID", "x"),
                       ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_CONFIG_FILE", os.devnull)):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with pytest.raises(OpsError) as err:
        tunnels_state.close("staging")
    assert "could not be terminated (alice-0123456789abcdef0:" in err.value.message
    assert err.value.next_step.startswith("invoke sessions --env staging")


def _launcher(kind: str) -> tuple[Callable[..., Any], str, Callable[[], argparse.ArgumentParser]]:
    """start_background, its child's module and the child's parser: the plain tunnel's, or the auth tunnel's
    (an env that lists people); both launch through ops.tunnel.launch_detached."""
    from ops import identity_tunnel, tunnel

    if kind == "tunnel":
        return tunnel.start_background, "ops.tunnel", tunnel.child_parser
    return identity_tunnel.start_background, "ops.identity_tunnel", identity_tunnel.child_parser


@pytest.mark.parametrize("kind", ["tunnel", "auth tunnel"])
def test_ctrl_c_while_a_background_tunnel_starts_stops_the_child(kind: str, state_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The detached child must not go on to open a tunnel after the user pressed Ctrl-C."""
    from ops import tunnel
    from ops.config import load_env

    start_background, _, _ = _launcher(kind)

    children: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def child(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        # Stands in for `python -m ops.tunnel ... --background` still starting (no AWS here).
        started = real_popen([sys.executable, "-c", "import time; time.sleep(60)", "tunnel"],
                             start_new_session=True)
        children.append(started)
        return started

    calls: list[str] = []

    def ctrl_c(env: str) -> None:
        calls.append(env)
        if len(calls) > 1:  # the first read is "is one running already?"; then we wait for the child
            raise KeyboardInterrupt

    monkeypatch.setattr(tunnel.subprocess, "Popen", child)
    monkeypatch.setattr(tunnel.tunnels_state, "read", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        start_background(load_env("staging"), local_port=0, transport="native", timeout=30)
    (started,) = children
    assert started.poll() is not None, "the starting child survived Ctrl-C"


@pytest.mark.parametrize("kind", ["tunnel", "auth tunnel"])
def test_a_reason_starting_with_dashes_reaches_the_background_child(kind: str, state_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import tunnel
    from ops.config import load_env

    start_background, module, child_parser = _launcher(kind)

    seen: list[list[str]] = []

    def child(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        seen.append(list(argv))
        raise KeyboardInterrupt  # stop here: only the command line matters

    monkeypatch.setattr(tunnel.subprocess, "Popen", child)
    with pytest.raises(KeyboardInterrupt):
        start_background(load_env("staging"), local_port=0, transport="native", reason="--INC-7 -x", host="--odd")
    (argv,) = seen
    assert argv[1:3] == ["-m", module]
    args = child_parser().parse_args(argv[3:])
    assert args.reason == "--INC-7 -x" and args.host == "--odd" and args.env == "staging"
    assert args.local_port == 0 and args.transport == "native"
    assert getattr(args, "background", kind == "tunnel") == (kind == "tunnel")


def test_a_failed_terminate_session_is_reported_with_the_fix() -> None:
    import asyncio

    from ops import tunnel
    from ops.config import load_env

    class RefusingSsm:
        def terminate_session(self, **_kwargs: object) -> None:
            raise RuntimeError("AccessDeniedException: not yours")

    lines: list[str] = []
    sup = tunnel.Supervisor(load_env("staging"), report=lines.append)
    sup._ssm = RefusingSsm()
    sup.open_sessions.append("s-1")
    asyncio.run(sup._terminate_api("s-1"))
    assert lines == ["warning: could not terminate session s-1 (AccessDeniedException: not yours); end it: invoke "
                     "sessions-terminate --env staging --session s-1"]
    assert sup.open_sessions == ["s-1"], "still ours to end"


def test_the_auth_tunnels_record_follows_a_reconnect_to_a_new_session(state_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Its state file named only the first session: after a reconnect that opened a new one, `tunnel-close` of a
    killed auth tunnel would have ended the old session and left the new one open."""
    import threading

    from ops import identity_tunnel, tunnel

    monkeypatch.setattr(tunnel, "METER_INTERVAL", 0.01)
    record = tunnels_state.claim(tunnels_state.TunnelRecord(env="staging", pid=os.getpid(), local_port=5433))
    record = tunnels_state.update(record, status="ready", session_id="alice-1", sessions=("alice-1",))
    states = [tunnel.LiveState("reconnecting", "alice-1", ("alice-1",), 0),
              tunnel.LiveState("ready", "alice-2", ("alice-2",), 1)]
    stop = threading.Event()
    written: list[str] = []
    real_update = tunnels_state.update

    def live() -> tunnel.LiveState:
        if len(states) == 1:
            stop.set()
            return states[0]
        return states.pop(0)

    def update(rec: tunnels_state.TunnelRecord, **changes: Any) -> tunnels_state.TunnelRecord:
        written.append(changes.get("status", ""))
        return real_update(rec, **changes)

    monkeypatch.setattr(tunnels_state, "update", update)
    info = tunnel.TunnelInfo(env="staging", local_host="127.0.0.1", local_port=5433, session_id="alice-1",
                             transport="native", db_host="db", db_port=5432, db_name="app", db_user="alice",
                             instance_id="i-1", sessions=("alice-1",), live=live)
    deadline = threading.Timer(10, stop.set)  # a loop that never asks `live` fails the asserts, not the timeout
    deadline.start()
    try:
        last = identity_tunnel._meter_until(stop, record, info)
    finally:
        deadline.cancel()
    assert written[0] == "reconnecting", "a reconnect is recorded while it lasts"
    on_disk = tunnels_state._read_file(tunnels_state.state_path("staging"))  # (read() asks the pid to be a tunnel)
    assert on_disk is not None and on_disk == last
    assert (on_disk.status, on_disk.session_id, on_disk.sessions, on_disk.reconnects) == ("ready", "alice-2",
                                                                                          ("alice-2",), 1)
    tunnels_state.release(last)
