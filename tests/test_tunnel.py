"""Fast tunnel tests: transport choice, the plugin hand-off, URLs, ports, the readiness probe, state files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from ops import transport as transport_mod
from ops import tunnels_state
from ops.config import load_env
from ops.errors import OpsError, ToolMissingError
from ops.tunnel import (
    SSL_REQUEST,
    PortBusyError,
    TunnelInfo,
    TunnelNotReadyError,
    bind_listener,
    database_url,
    describe_ready,
    probe,
    reserve_port,
)
from tests.conftest import PROJECT_ROOT, plain_sandbox_env

INFO = TunnelInfo(env="sandbox", local_host="127.0.0.1", local_port=5433, session_id="me-0123", transport="native",
                  db_host="bastionless-sandbox.abc.us-east-1.rds.amazonaws.com", db_port=5432, db_name="app",
                  db_user="app_admin", instance_id="i-0abc")


@pytest.fixture
def fake_plugin(tmp_path: Path) -> Path:
    """An executable standing in for the plugin binary: records its argv and environment."""
    path = tmp_path / "session-manager-plugin"
    path.write_text("#!/bin/sh\necho 1.2.650.0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---- transport choice --------------------------------------------------------------------------

def test_auto_prefers_the_plugin_when_installed(monkeypatch: pytest.MonkeyPatch, fake_plugin: Path) -> None:
    monkeypatch.setenv(transport_mod.PLUGIN_ENV, str(fake_plugin))
    assert transport_mod.choose("auto") == "plugin"
    assert transport_mod.choose("native") == "native"


def test_auto_falls_back_to_native(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(transport_mod.PLUGIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert transport_mod.choose("auto") == "native"


def test_plugin_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(transport_mod.PLUGIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError) as exc:
        transport_mod.choose("plugin")
    assert exc.value.message == "session-manager-plugin is not installed (not on PATH)"
    assert "--transport native" in exc.value.next_step


def test_unknown_transport() -> None:
    with pytest.raises(OpsError, match="unknown transport 'ssh'"):
        transport_mod.choose("ssh")


# ---- the plugin hand-off, as the AWS CLI does it -----------------------------------------------

RESPONSE = {"SessionId": "me-0123", "TokenValue": "SECRET-TOKEN", "StreamUrl": "wss://ssmmessages.x/v1/data-channel/me",
            "ResponseMetadata": {"RequestId": "r"}}
PARAMS = {"Target": "i-0abc", "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
          "Parameters": {"host": ["db.example"], "portNumber": ["5432"], "localPortNumber": ["5433"]},
          "Reason": "INC-42"}


def test_plugin_argv_matches_the_aws_cli() -> None:
    argv, env = transport_mod.plugin_invocation(
        plugin="/usr/local/bin/session-manager-plugin", response=RESPONSE, region="eu-west-1", profile="",
        parameters=PARAMS, endpoint_url="https://ssm.eu-west-1.amazonaws.com", base_env={"PATH": "/bin"})
    assert argv == ["/usr/local/bin/session-manager-plugin", "AWS_SSM_START_SESSION_RESPONSE", "eu-west-1",
                    "StartSession", "", json.dumps(PARAMS), "https://ssm.eu-west-1.amazonaws.com"]
    # The answer (only these three keys, as the AWS CLI passes it) travels in the environment.
    assert json.loads(env["AWS_SSM_START_SESSION_RESPONSE"]) == {
        "SessionId": "me-0123", "TokenValue": "SECRET-TOKEN", "StreamUrl": RESPONSE["StreamUrl"]}
    assert env["PATH"] == "/bin"
    assert not any("SECRET-TOKEN" in a for a in argv)


def test_plugin_argv_passes_the_profile() -> None:
    argv, _ = transport_mod.plugin_invocation(plugin="p", response=RESPONSE, region="eu-west-1", profile="prod-sso",
                                              parameters={"Target": "i-0abc"}, endpoint_url="u", base_env={})
    assert argv[4] == "prod-sso" and json.loads(argv[5]) == {"Target": "i-0abc"}


@pytest.mark.parametrize(("version", "ok"), [("1.2.650.0", True), ("1.2.498.0", True), ("1.2.497.0", False),
                                             ("1.1.61.0", False), ("1.3", True), ("garbage", False)])
def test_env_handoff_version_rule(version: str, ok: bool) -> None:
    assert transport_mod.supports_env_handoff(version) is ok


def test_old_plugin_error_says_why() -> None:
    err = transport_mod.old_plugin_error("1.1.61.0")
    assert "too old" in err.message and "command line" in err.message
    assert "newer than 1.2.497.0" in err.next_step


@pytest.mark.usefixtures("real_io")
def test_plugin_version_strips_whitespace(fake_plugin: Path) -> None:
    assert transport_mod.plugin_version(str(fake_plugin)) == "1.2.650.0"


# ---- URL and the ready text --------------------------------------------------------------------

def test_database_url_for_verify_full_dials_localhost_but_checks_the_rds_name() -> None:
    cfg = load_env("prod")
    url = database_url(cfg, INFO)
    assert url.startswith("postgresql://app_admin@bastionless-sandbox.abc.us-east-1.rds.amazonaws.com:5433/app?")
    assert "hostaddr=127.0.0.1" in url and f"sslmode={cfg.database.sslmode}" in url
    assert f"sslrootcert={quote(str(PROJECT_ROOT / cfg.database.ca_bundle), safe='')}" in url
    assert ":@" not in url and "password" not in url


def test_database_url_sandbox() -> None:
    cfg = plain_sandbox_env()
    assert database_url(cfg, INFO) == "postgresql://app_admin@127.0.0.1:5433/app?sslmode=disable"


def test_ready_text_has_everything_a_user_needs() -> None:
    cfg = plain_sandbox_env()
    text = describe_ready(cfg, INFO, background=False, secret_arn="arn:aws:secretsmanager:x")
    for needle in ("host       127.0.0.1", "port       5433", "database   app", "user       app_admin",
                   "DATABASE_URL=postgresql://app_admin@127.0.0.1:5433/app?sslmode=disable", "Ctrl-C",
                   "invoke tunnel-close --env sandbox", "arn:aws:secretsmanager:x"):
        assert needle in text
    assert "Ctrl-C" not in describe_ready(cfg, INFO, background=True)


# ---- ports and the probe -----------------------------------------------------------------------

@pytest.mark.usefixtures("real_io")
def test_busy_port_is_one_line_with_the_fix() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortBusyError) as exc:
            bind_listener("127.0.0.1", port)
        assert exc.value.message == f"local port {port} is already in use"
        assert "--local-port 0" in exc.value.next_step
        with pytest.raises(PortBusyError):
            reserve_port("127.0.0.1", port)


@pytest.mark.usefixtures("real_io")
def test_port_zero_picks_a_free_port() -> None:
    sock = bind_listener("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


@pytest.mark.usefixtures("real_io")
def test_connections_to_the_tunnel_port_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and an accepted connection takes
    the listener's. The listener used to be made with proto 0: Nagle stayed on, and every reply of 33-80 KB
    through a native tunnel took 80 ms (Nagle waiting on the client's delayed ACK) instead of ~40 ms."""
    async def main() -> int:
        sock = bind_listener("127.0.0.1", 0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connection(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            value = await asyncio.wait_for(accepted, 5)
            w.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) != 0


async def _answer_server(answer: bytes) -> tuple[asyncio.Server, int, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readexactly(8))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


@pytest.mark.usefixtures("real_io")
@pytest.mark.parametrize("answer", [b"S", b"N"])
def test_probe_sends_an_ssl_request_and_accepts_s_or_n(answer: bytes) -> None:
    async def main() -> tuple[bytes, list[bytes]]:
        server, port, seen = await _answer_server(answer)
        async with server:
            return await probe("127.0.0.1", port), seen

    got, seen = asyncio.run(main())
    assert got == answer and seen == [SSL_REQUEST]
    assert SSL_REQUEST == (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


@pytest.mark.usefixtures("real_io")
def test_probe_rejects_something_that_is_not_postgresql() -> None:
    async def main() -> None:
        server, port, _ = await _answer_server(b"H")
        async with server:
            await probe("127.0.0.1", port)

    with pytest.raises(TunnelNotReadyError, match="not PostgreSQL"):
        asyncio.run(main())


# ---- state files -------------------------------------------------------------------------------


def _sleeper() -> subprocess.Popen[bytes]:
    # Its command line contains "tunnel", like every real tunnel process.
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tunnel"])


@pytest.mark.usefixtures("real_io")
def test_claim_list_release(state_dir: Path) -> None:
    # A live process that looks like a tunnel: pytest's own command line need not contain "tunnel".
    proc = _sleeper()
    try:
        record = tunnels_state.claim(tunnels_state.TunnelRecord(env="a", pid=proc.pid, local_port=5433))
        path = tunnels_state.state_path("a")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        record = tunnels_state.update(record, status="ready", session_id="s-1", transport="native", reconnects=2)
        (listed,) = tunnels_state.list_tunnels()
        assert (listed.env, listed.status, listed.session_id, listed.reconnects) == ("a", "ready", "s-1", 2)
        tunnels_state.release(record)
        assert tunnels_state.list_tunnels() == [] and not path.exists()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.usefixtures("real_io")
def test_second_tunnel_to_the_same_env_is_refused(state_dir: Path) -> None:
    proc = _sleeper()
    try:
        tunnels_state.claim(tunnels_state.TunnelRecord(env="a", pid=proc.pid, local_port=5433))
        with pytest.raises(tunnels_state.TunnelExistsError) as exc:
            tunnels_state.claim(tunnels_state.TunnelRecord(env="a", pid=os.getpid()))
        assert "already running on this machine (port 5433" in exc.value.message
        assert exc.value.next_step == "use it, or invoke tunnel-close --env a"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.usefixtures("real_io")
def test_stale_state_is_dropped(state_dir: Path) -> None:
    proc = _sleeper()
    tunnels_state.claim(tunnels_state.TunnelRecord(env="gone", pid=proc.pid))
    proc.kill()
    proc.wait()
    assert tunnels_state.list_tunnels() == []
    assert not tunnels_state.state_path("gone").exists()
    # ...and the slot is free again.
    tunnels_state.claim(tunnels_state.TunnelRecord(env="gone", pid=os.getpid()))


@pytest.mark.usefixtures("real_io")
def test_close_sends_sigterm_and_waits(state_dir: Path) -> None:
    procs = [_sleeper(), _sleeper()]
    try:
        for name, proc in zip(("a", "b"), procs, strict=True):
            tunnels_state.claim(tunnels_state.TunnelRecord(env=name, pid=proc.pid))
        closed = tunnels_state.close("a", timeout=5)
        assert closed.env == "a" and procs[0].poll() is not None
        assert [r.env for r in tunnels_state.list_tunnels()] == ["b"]
        assert [r.env for r in tunnels_state.close_all(timeout=5)] == ["b"]
        assert procs[1].poll() is not None and tunnels_state.list_tunnels() == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_close_unknown_env(state_dir: Path) -> None:
    with pytest.raises(OpsError, match="no tunnel to nope is running") as exc:
        tunnels_state.close("nope")
    assert exc.value.next_step == "invoke tunnels"


def test_table() -> None:
    now = time.time()
    records = [tunnels_state.TunnelRecord(env="prod", pid=1, status="ready", local_port=5433, session_id="me-1",
                                          transport="plugin", started=now - 3725, reconnects=1, background=True),
               replace(tunnels_state.TunnelRecord(env="sandbox", pid=2, local_port=5434), started=now - 5)]
    table = tunnels_state.format_table(records, now=now).splitlines()
    assert table[0].split() == ["ENV", "LOCAL", "SESSION", "TRANSPORT", "UPTIME", "RECONNECTS", "STATUS", "PID"]
    assert table[1].split() == ["prod", "127.0.0.1:5433", "me-1", "plugin", "1h02m", "1", "ready", "1"]
    assert table[2].split()[:5] == ["sandbox", "127.0.0.1:5434", "-", "-", "0m05s"]
    assert "no tunnels running" in tunnels_state.format_table([])


@pytest.mark.usefixtures("real_io")
def test_cli_help_and_import_stay_light() -> None:
    # `invoke --list` must not pay for the tunnel machinery (asyncio client, websockets).
    code = ("import sys; sys.path.insert(0, '.'); import cli.tunnel; "
            "print(any(m in sys.modules for m in ('ops.tunnel', 'websockets', 'ops.ssm.client')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.usefixtures("real_io")
def test_dash_h_is_help_not_host() -> None:
    out = subprocess.run([sys.executable, "-m", "invoke", "tunnel", "-h"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Docstring:" in out.stdout and "--host=STRING" in out.stdout


@pytest.mark.parametrize(("requested", "retried"), [(0, True), (6543, False)])
def test_a_port_the_plugin_still_could_not_bind_is_chosen_again_only_if_the_tunnel_chose_it(
        requested: int, retried: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is held until the plugin listens (tests/test_tunnel_sandbox.py); should the plugin still report it
    taken, the decision, with the plugin stood in for."""
    from ops import tunnel as tunnel_mod

    sup = tunnel_mod.Supervisor(plain_sandbox_env(), local_port=requested, transport="plugin", report=lambda _l: None)
    ports = iter([6543, 7654, 8765])

    class Held:  # what reserve_port returns: the port, bound and held
        def __init__(self, port: int) -> None:
            self.port = port

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

        def close(self) -> None:
            pass

    monkeypatch.setattr(tunnel_mod, "reserve_port", lambda host, port: Held(next(ports) if port == 0 else port))
    monkeypatch.setattr(transport_mod, "choose", lambda requested: "plugin")
    opened: list[int] = []
    abandoned: list[int] = []

    async def discover() -> tuple[object, object]:
        return object(), object()

    async def open_() -> None:
        opened.append(sup.local_port)
        sup._plugin_version = "1.2.707.0"

    async def wait_ready() -> None:
        if len(opened) == 1:  # the plugin printed its bind error and exited 0
            sup._plugin_port_taken = True
            raise sup._plugin_failed(0)
        raise RuntimeError("ready")  # stop here: the rest of _run is not this test's business

    async def abandon() -> None:
        abandoned.append(sup.local_port)

    monkeypatch.setattr(sup, "_discover", discover)
    monkeypatch.setattr(sup, "_open", open_)
    monkeypatch.setattr(sup, "_wait_ready", wait_ready)
    monkeypatch.setattr(sup, "_abandon_plugin_session", abandon)
    monkeypatch.setattr(tunnel_mod, "describe_found", lambda relay, db: "found")
    if retried:
        with pytest.raises(RuntimeError, match="ready"):
            asyncio.run(sup._run())
        assert opened == [6543, 7654] and abandoned == [6543]
    else:
        with pytest.raises(PortBusyError, match=r"^local port 6543 is already in use$") as caught:
            asyncio.run(sup._run())
        assert caught.value.next_step == "pass --local-port 0 for a free port, or --local-port N for another one"
        assert opened == [6543] and abandoned == []
