"""`invoke tunnel`: localhost:PORT -> Session Manager -> relay -> RDS, supervised.

One supervisor runs a tunnel in any of its forms (foreground, `--background`, `open_tunnel()` for other
tasks): discover the relay and the database through the AWS APIs, StartSession, hand the session to a
transport (the built-in client, or the session-manager-plugin started as the AWS CLI starts it), and
call it ready only when a PostgreSQL SSLRequest sent through the tunnel is answered. Then supervise:
a dropped data channel is resumed (ResumeSession), else replaced by a new session, with backoff, while
the local port stays open; an idle tunnel is kept alive; Ctrl-C or SIGTERM terminates the session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ops import aws, dburl, facts, tunnels_state
from ops import transport as transport_mod
from ops.config import PROJECT_ROOT, EnvConfig, parse_env
from ops.discovery import (
    DatabaseInfo,
    RelayInfo,
    RelayNotReadyError,
    aws_call,
    database_override,
    find_database,
    find_relay,
)
from ops.errors import OpsError, ToolMissingError
from ops.facts import PORT_DOCUMENT
from ops.iam_policies import port_document_name, target_document_name
from ops.inputs import check_reason
from ops.ssm.errors import SessionError

# PostgreSQL's SSLRequest (length 8, code 80877103): every server answers it with one byte, S or N,
# before any authentication, so it proves the whole chain without credentials.
SSL_REQUEST = struct.pack("!II", 8, 80877103)
READY_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0
# A connection that arrives while the channel is being re-established waits this long for it.
CONNECTION_WAIT = 30.0
BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
CLEANUP_TIMEOUT = 15.0
# The plugin listens on the local port itself, seconds after we chose it; reserve_port holds it until then.
# Should the plugin still report it taken, a port we chose (--local-port 0) is chosen again, with a new session,
# this many times in all.
PLUGIN_PORT_ATTEMPTS = 3
# What the plugin prints when its port is taken: "Cannot perform start session: listen tcp ...: bind: address
# already in use" (session-manager-plugin src/sessionmanagerplugin/session/session.go, the error of net.Listen in
# portsession/muxportforwarding.go or basicportforwarding.go), and it exits 0.
PLUGIN_PORT_TAKEN = "address already in use"
BACKGROUND_START_TIMEOUT = 60.0
# Test hook: "discovering=2,starting=2" holds the tunnel that long in a phase (signal tests).
PHASE_DELAY_ENV = facts.TUNNEL_PHASE_DELAY_ENV
LOCAL_HOST = "127.0.0.1"

Report = Callable[[str], None]


class PortBusyError(OpsError):
    """The requested local port is taken."""


class TunnelNotReadyError(OpsError):
    """The session opened but PostgreSQL did not answer through it."""


class SessionEndedError(OpsError):
    """Session Manager ended the session on purpose (TerminateSession, idle timeout, maximum duration).

    Reopening it would undo an administrator's revocation behind their back, so the tunnel stops."""


ENDED_STATUSES = frozenset({"Terminated", "Terminating", "Failed"})


@dataclass(frozen=True)
class LaneStats:
    """One session's traffic on its current data channel: what `invoke tunnels` and dump progress show."""

    session_id: str
    sent: int
    received: int
    connections: int

    @property
    def total(self) -> int:
        return self.sent + self.received


@dataclass(frozen=True)
class TunnelInfo:
    env: str
    local_host: str
    local_port: int
    session_id: str
    transport: str
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    instance_id: str
    # Every session carrying the tunnel (a pool has several; session_id is the first).
    sessions: tuple[str, ...] = ()
    # Live byte counters of the running tunnel (None for a record read from another process).
    stats: Callable[[], list[LaneStats]] | None = field(default=None, compare=False, repr=False)
    # Live status and sessions of the running tunnel, as its state file records them (None as above).
    live: Callable[[], LiveState] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LiveState:
    """What a running tunnel's state file says of it now: `invoke tunnels` shows it and `tunnel-close` ends
    these sessions (those of a tunnel that was killed, too)."""
    status: str  # starting, ready, reconnecting
    session_id: str
    sessions: tuple[str, ...]
    reconnects: int

    @classmethod
    def of(cls, runner: Supervisor | Pool) -> LiveState:
        status = {"ready": "ready", "reconnecting": "reconnecting"}.get(runner.phase, "starting")
        return cls(status=status, session_id=runner.session_id, sessions=tuple(runner.open_sessions),
                   reconnects=runner.reconnects)

    def recorded(self) -> dict[str, Any]:
        """The state file's fields."""
        return {"status": self.status, "session_id": self.session_id, "sessions": self.sessions,
                "reconnects": self.reconnects}


def database_url(cfg: EnvConfig, info: TunnelInfo) -> str:
    """DATABASE_URL for the tunnel, without the password. TLS names the real endpoint, dials localhost."""
    return dburl.for_tunnel(cfg, local_port=info.local_port, db_host=info.db_host, db_name=info.db_name,
                            user=info.db_user, local_host=info.local_host, connecting=False).url()


def describe_ready(cfg: EnvConfig, info: TunnelInfo, *, background: bool, secret_arn: str = "",
                   target: str = "") -> str:
    stop = (f"invoke tunnel-close --env {info.env}" if background
            else f"Ctrl-C (or invoke tunnel-close --env {info.env} from another terminal)")
    sessions = info.sessions or (info.session_id,)
    carried = (f"1 session: {sessions[0]}" if len(sessions) == 1
               else f"a pool of {len(sessions)} sessions: {', '.join(sessions)}")
    if target:
        return "\n".join([
            f"tunnel to {info.env} target {target} ready: {info.local_host}:{info.local_port} -> relay "
            f"{info.instance_id} -> {info.db_host}:{info.db_port}",
            f"  transport  {info.transport} ({carried})",
            f"stop: {stop}"])
    lines = [
        f"tunnel to {info.env} ready: {info.local_host}:{info.local_port} -> relay {info.instance_id} -> "
        f"{info.db_host}:{info.db_port}",
        f"  transport  {info.transport} ({carried})",
        f"  host       {info.local_host}",
        f"  port       {info.local_port}",
        f"  database   {info.db_name}",
        f"  user       {info.db_user}",
        f"  DATABASE_URL={database_url(cfg, info)}",
    ]
    if secret_arn:
        lines.append(f"  password   in Secrets Manager: {secret_arn}")
    lines.append(f"stop: {stop}")
    return "\n".join(lines)


def stderr_report(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} tunnel: {line}", file=sys.stderr, flush=True)


# ---- sockets -----------------------------------------------------------------------------------

def _busy(port: int) -> PortBusyError:
    holder = next((r for r in tunnels_state.list_tunnels() if r.local_port == port), None)
    who = f" by the tunnel to {holder.env}" if holder else ""
    return PortBusyError(f"local port {port} is already in use{who}",
                         next_step="pass --local-port 0 for a free port, or --local-port N for another one")


def bind_listener(host: str, port: int) -> socket.socket:
    """The tunnel's listening socket, bound before any AWS call so a busy port costs nothing."""
    sock = _bound(host, port, listen=True)
    sock.setblocking(False)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """For the plugin, which listens on the port itself seconds later: the port (`port`, or a free one for 0)
    bound now and held, not listening, until the plugin listens on it.

    Held with SO_REUSEADDR, which the plugin's listener sets too (Go's net.Listen): Linux lets it listen on a
    port that sockets only bound hold, while no other program's bind, listen or outgoing connection takes
    that port in the meantime. (Found free and closed again, it was taken once in a busy test run before the
    plugin listened: "bind: address already in use".)"""
    return _bound(host, port, listen=False)


def _bound(host: str, port: int, *, listen: bool) -> socket.socket:
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP,
    # and accepted connections copy the listener's. With proto 0 every reply of 33-80 KB through the tunnel
    # waited 80 ms on Nagle and the client's delayed acknowledgement (twice the time the agent needs).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    # Still refuses a port another process listens on; only lets us reuse our own TIME_WAIT ones (and lets
    # the plugin listen on a port reserve_port holds).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise _busy(port) from None
        raise OpsError(f"cannot listen on {host}:{port}: {exc.strerror}",
                       next_step="pick another --local-port") from None
    return sock


async def probe(host: str, port: int, *, timeout: float = PROBE_TIMEOUT) -> bytes:
    """Send an SSLRequest through the tunnel; PostgreSQL answers b'S' or b'N'."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(SSL_REQUEST)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(1), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if answer not in (b"S", b"N"):
        raise TunnelNotReadyError(f"the far end answered {answer!r} to a PostgreSQL SSLRequest: not PostgreSQL",
                                  next_step="check --host / the database endpoint")
    return answer


def _phase_delays() -> dict[str, float]:
    delays: dict[str, float] = {}
    for part in os.environ.get(PHASE_DELAY_ENV, "").split(","):
        name, _, value = part.partition("=")
        with contextlib.suppress(ValueError):
            delays[name.strip()] = float(value)
    return delays


async def discover(cfg: EnvConfig, *, instance: str = "", host: str = "", target: str = ""
                   ) -> tuple[RelayInfo, DatabaseInfo]:
    """The relay and the database (or the extra target), through the AWS APIs (once per tunnel)."""
    relay_f = asyncio.to_thread(find_relay, cfg, instance_id=instance)
    if target:
        return await relay_f, target_info(cfg, target)
    if host:
        return await relay_f, database_override(cfg, host)
    relay, db = await asyncio.gather(relay_f, asyncio.to_thread(find_database, cfg))
    return relay, db


def target_info(cfg: EnvConfig, name: str) -> DatabaseInfo:
    """`--target NAME`: one of the env's [[targets]], described where the tunnel keeps its far end."""
    found = next((t for t in cfg.targets if t.name == name), None)
    if found is None:
        known = ", ".join(t.name for t in cfg.targets) or "none"
        raise OpsError(f"--target {name!r} is not a target of {cfg.name} (its targets: {known})",
                       next_step=f"add it as [[targets]] to {cfg.source.name} and invoke deploy, or drop --target")
    return DatabaseInfo(identifier="", address=found.host, port=found.port, name="", username="", secret_arn="",
                        status=f"target {name}", deletion_protection=False)


async def probe_open(host: str, port: int, *, timeout: float = PROBE_TIMEOUT, settle: float = 1.0) -> None:
    """A target that is not PostgreSQL: ready when a connection through the tunnel stays open (or the far
    end speaks first); the agent closes it at once when it cannot reach the target."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        try:
            data = await asyncio.wait_for(reader.read(1), settle)
        except TimeoutError:
            return
        if not data:
            raise ConnectionResetError("the far end closed the connection at once")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def describe_found(relay: RelayInfo, db: DatabaseInfo) -> str:
    return (f"relay {relay.instance_id} (SSM agent {relay.agent_version or 'unknown'}, {relay.ping_status}); "
            f"database {db.address}:{db.port}")


class _LazyClient:
    """A boto3 client built on first use: KMS is needed only when session encryption is on."""

    def __init__(self, cfg: EnvConfig, service: str) -> None:
        self._cfg, self._service, self._client = cfg, service, None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = aws.client(self._cfg, self._service)
        return getattr(self._client, name)


# ---- the supervisor ----------------------------------------------------------------------------

class Supervisor:
    """Runs one tunnel until cancelled; raises OpsError when it cannot become ready."""

    def __init__(self, cfg: EnvConfig, *, local_host: str = LOCAL_HOST, local_port: int = 0, reason: str = "",
                 transport: str = "auto", instance: str = "", host: str = "", report: Report = stderr_report,
                 on_ready: Callable[[TunnelInfo], None] | None = None,
                 on_change: Callable[[Supervisor], None] | None = None,
                 keepalive: float | None = None, ready_timeout: float = READY_TIMEOUT,
                 discovered: tuple[RelayInfo, DatabaseInfo] | None = None, target: str = "") -> None:
        check_reason(reason)
        self.cfg = cfg
        self.target = target
        # Given by a Pool, which discovers once for all its sessions.
        self._discovered = discovered
        self.local_host = local_host
        self.local_port = local_port
        self._requested_port = local_port
        self.reason = reason.strip()
        self.requested_transport = transport
        self.instance = instance
        self.host = host
        self.report = report
        self.on_ready = on_ready
        self.on_change = on_change
        idle = cfg.session.idle_timeout_minutes * 60
        self.keepalive = keepalive if keepalive is not None else min(300.0, max(30.0, idle / 4))
        self.ready_timeout = ready_timeout
        self.phase = "init"
        self.mode = ""
        self.session_id = ""
        self.reconnects = 0
        self.open_sessions: list[str] = []
        self.relay: RelayInfo | None = None
        self.db: DatabaseInfo | None = None
        self.info: TunnelInfo | None = None
        self._ssm: Any = None
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._ps: Any = None
        self._ps_ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._plugin: str = ""
        self._plugin_version = ""
        self._pump: asyncio.Task[None] | None = None
        self._plugin_port_taken = False
        # The plugin's local port, held from the moment it is chosen until the plugin listens (reserve_port).
        self._held: socket.socket | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._active = 0
        self._last_activity = time.monotonic()
        # Bytes a Pool forwarded to this session's plugin (the native client counts its own).
        self.bytes_sent = 0
        self.bytes_received = 0
        self._delays = _phase_delays()
        # monotonic timestamps of the first start: run, discovered, session_answer, ready (bench/tunnel)
        self.timings: dict[str, float] = {}

    # ---- lifecycle ----
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._cleanup()), CLEANUP_TIMEOUT)

    async def _run(self) -> None:
        self.timings["run"] = time.monotonic()
        self.mode = transport_mod.choose(self.requested_transport)
        if self.mode == "plugin":
            self._plugin = transport_mod.plugin_path() or transport_mod.PLUGIN
            self._held = reserve_port(self.local_host, self.local_port)
            self.local_port = self._held.getsockname()[1]
        else:
            self._sock = bind_listener(self.local_host, self.local_port)
            self.local_port = self._sock.getsockname()[1]
            self._server = await asyncio.start_server(self._on_connection, sock=self._sock)
        if self.requested_transport == "auto":
            self.report(f"transport: {self.mode}" + (" (session-manager-plugin found)" if self.mode == "plugin"
                                                     else " (built-in client; no session-manager-plugin)"))
        if self._discovered is None:
            await self._enter("discovering", f"finding the relay and the database of {self.cfg.name}")
            self.relay, self.db = await self._discover()
            self.timings["discovered"] = time.monotonic()
            self.report(describe_found(self.relay, self.db))
        else:
            self.relay, self.db = self._discovered
            self.timings["discovered"] = time.monotonic()
        await self._enter("starting", "starting a Session Manager session")
        for attempt in range(1, PLUGIN_PORT_ATTEMPTS + 1):
            await self._open()
            try:
                await self._wait_ready()
                self._release_held_port()
                break
            except PortBusyError:
                if self.mode != "plugin" or self._requested_port or attempt == PLUGIN_PORT_ATTEMPTS:
                    raise
                taken = self.local_port
                await self._abandon_plugin_session()
                self._held = reserve_port(self.local_host, 0)
                self.local_port = self._held.getsockname()[1]
                self.report(f"local port {taken} was taken before {transport_mod.PLUGIN} listened on it; starting "
                            f"again on port {self.local_port}")
        self.timings["ready"] = time.monotonic()
        self.report(f"ready: {f'target {self.target}' if self.target else 'PostgreSQL'} answered through the tunnel "
                    f"{self.timings['ready'] - self.timings['session_answer']:.3f} s after the StartSession answer "
                    f"({self.timings['ready'] - self.timings['run']:.2f} s since start)")
        self.info = self._info()
        self.phase = "ready"
        if self.on_ready is not None:
            self.on_ready(self.info)
        self._changed()
        self._keepalive_task = asyncio.ensure_future(self._keepalive_loop())
        while True:
            dropped, why = await self._wait_channel_end()
            if not dropped or await self._session_status(self.session_id) in ENDED_STATUSES:
                raise self._ended(why)
            self.phase = "reconnecting"
            self._changed()
            await self._reconnect(dropped=dropped, why=why)
            self.info = self._info()
            self.phase = "ready"
            self._changed()

    async def _enter(self, phase: str, what: str) -> None:
        self.phase = phase
        self.report(f"{what}...")
        self._changed()

    async def _hold(self, phase: str) -> None:
        delay = self._delays.get(phase, 0.0)
        if delay > 0:
            self.report(f"(test hook) holding in phase {phase} for {delay:g} s")
            await asyncio.sleep(delay)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def _info(self) -> TunnelInfo:
        assert self.relay is not None and self.db is not None
        return TunnelInfo(env=self.cfg.name, local_host=self.local_host, local_port=self.local_port,
                          session_id=self.session_id, transport=self.mode, db_host=self.db.address,
                          db_port=self.db.port, db_name=self.db.name, db_user=self.db.username,
                          instance_id=self.relay.instance_id, sessions=(self.session_id,), stats=self.lane_stats,
                          live=functools.partial(LiveState.of, self))

    @property
    def connections(self) -> int:
        """Local connections this session carries now."""
        return self._active

    def lane_stats(self) -> list[LaneStats]:
        session = self._ps
        if session is not None:
            sent, received = session.bytes_sent, session.bytes_received
        else:
            sent, received = self.bytes_sent, self.bytes_received
        return [LaneStats(session_id=self.session_id, sent=sent, received=received, connections=self._active)]

    async def _discover(self) -> tuple[RelayInfo, DatabaseInfo]:
        found = await discover(self.cfg, instance=self.instance, host=self.host, target=self.target)
        await self._hold("discovering")
        return found

    # ---- sessions ----
    def ssm(self) -> Any:
        if self._ssm is None:
            self._ssm = aws.client(self.cfg, "ssm")
        return self._ssm

    def _parameters(self) -> dict[str, Any]:
        assert self.relay is not None and self.db is not None
        if self.target:
            # One of the env's extra targets: its own document fixes host and port, as the database's does.
            params: dict[str, Any] = {
                "Target": self.relay.instance_id,
                "DocumentName": target_document_name(self.cfg.stack_name, self.target),
                "Parameters": {"localPortNumber": [str(self.local_port)]}}
        elif self.host:
            # Any host: only the generic document can do that, and only admins are allowed it.
            params = {
                "Target": self.relay.instance_id, "DocumentName": PORT_DOCUMENT,
                "Parameters": {"host": [self.db.address], "portNumber": [str(self.db.port)],
                               "localPortNumber": [str(self.local_port)]}}
        else:
            # The env's own document fixes host and port to the database; we choose the local port only.
            params = {"Target": self.relay.instance_id, "DocumentName": port_document_name(self.cfg.stack_name),
                      "Parameters": {"localPortNumber": [str(self.local_port)]}}
        if self.reason:
            params["Reason"] = self.reason
        return params

    async def _start_session(self) -> dict[str, Any]:
        params = self._parameters()
        ssm = self.ssm()

        def call() -> dict[str, Any]:
            try:
                if self.host:
                    # Checked before aws_call turns a denial into its generic line: --host has its own reason.
                    try:
                        result: dict[str, Any] = ssm.start_session(**params)
                    except Exception as exc:
                        if getattr(exc, "response", {}).get("Error", {}).get("Code", "") in ("AccessDeniedException",
                                                                                                "AccessDenied"):
                            raise OpsError(
                                f"--host needs the generic {PORT_DOCUMENT} document, which only admin roles may use "
                                f"(the developer role forwards to the database of {self.cfg.name} only); refused",
                                next_step=f"invoke tunnel --env {self.cfg.name} (without --host)") from None
                        raise
                    return result
                result = aws_call(self.cfg, "ssm:StartSession", lambda: ssm.start_session(**params),
                                  passthrough=("TargetNotConnected",))
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code == "TargetNotConnected":
                    iid = params["Target"]
                    raise RelayNotReadyError(
                        f"relay {iid} is not connected to Session Manager (TargetNotConnected)",
                        next_step=f"invoke doctor --env {self.cfg.name}") from None
                raise
            return result

        future = asyncio.ensure_future(asyncio.to_thread(call))
        try:
            response = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The call may still create a session after we were told to stop: end it, leave none open.
            with contextlib.suppress(Exception):
                late = await future
                await self._terminate_api(str(late["SessionId"]), track=False)
            raise
        self.open_sessions.append(str(response["SessionId"]))
        return response

    async def _resume_session(self, session_id: str) -> dict[str, Any]:
        ssm = self.ssm()
        result: dict[str, Any] = await asyncio.to_thread(
            lambda: aws_call(self.cfg, "ssm:ResumeSession", lambda: ssm.resume_session(SessionId=session_id)))
        return result

    async def _session_status(self, session_id: str) -> str:
        """The service's view of a session ('' when it cannot tell): Terminated means someone ended it."""
        ssm = self.ssm()

        def call() -> str:
            for state in ("Active", "History"):
                found = ssm.describe_sessions(State=state, Filters=[{"key": "SessionId", "value": session_id}])
                for sess in found.get("Sessions") or []:
                    if sess.get("SessionId") == session_id:
                        return str(sess.get("Status", ""))
            return ""

        try:
            return await asyncio.to_thread(call)
        except Exception:
            return ""

    def _ended(self, why: str) -> SessionEndedError:
        if session := self.session_id:
            self.open_sessions[:] = [s for s in self.open_sessions if s != session]
        return SessionEndedError(
            f"Session Manager ended session {session} ({why}): an administrator's TerminateSession, the idle "
            f"timeout, the maximum session duration or the relay going away; the tunnel does not reopen it",
            next_step=f"invoke audit --env {self.cfg.name} --since 24h shows who terminated it; "
                      f"invoke tunnel --env {self.cfg.name} opens a new session if you are still allowed to")

    async def _terminate_api(self, session_id: str, *, track: bool = True) -> None:
        ssm = self.ssm()
        try:
            await asyncio.to_thread(ssm.terminate_session, SessionId=session_id)
        except Exception as exc:
            # The session may still be open in AWS: say which, and how to end it.
            self.report(f"warning: could not terminate session {session_id} ({exc}); end it: invoke "
                        f"sessions-terminate --env {self.cfg.name} --session {session_id}")
            return
        if track and session_id in self.open_sessions:
            self.open_sessions.remove(session_id)

    async def _open(self) -> None:
        """StartSession and hand the answer to the transport."""
        response = await self._start_session()
        self.session_id = str(response["SessionId"])
        self.timings.setdefault("session_answer", time.monotonic())
        self._changed()
        await self._hold("starting")
        if self.mode == "native":
            await self._start_native(response)
        else:
            await self._start_plugin(response)

    async def _start_native(self, response: dict[str, Any]) -> None:
        from ops.ssm.client import PortSession

        assert self.relay is not None
        session = PortSession(stream_url=response["StreamUrl"], token=response["TokenValue"],
                              session_id=str(response["SessionId"]), on_event=self._agent_event,
                              target=self.relay.instance_id, kms_client=_LazyClient(self.cfg, "kms"),
                              ca_file=transport_mod.sandbox_ca_file(self.cfg))
        try:
            await session.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await session.close()
            raise
        self._ps = session
        self._ps_ready.set()

    def _agent_event(self, line: str) -> None:
        if self.phase != "stopping":  # the agent acknowledging our own terminate is not news
            self.report(line)

    def _plugin_env(self) -> dict[str, str]:
        return transport_mod.plugin_env(self.cfg, os.environ)

    async def _start_plugin(self, response: dict[str, Any]) -> None:
        if not self._plugin_version:
            self._plugin_version = await asyncio.to_thread(transport_mod.plugin_version, self._plugin)
        argv, env = transport_mod.plugin_invocation(
            plugin=self._plugin, response=response, region=self.cfg.region,
            profile=transport_mod.default_profile(self.cfg), parameters=self._parameters(),
            endpoint_url=str(self.ssm().meta.endpoint_url), base_env=self._plugin_env())
        try:
            # Its own session: Ctrl-C at the terminal reaches us, and we end the plugin in order.
            self._proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)
        except OSError as exc:
            raise ToolMissingError(
                f"cannot run {self._plugin}: {exc.strerror}",
                next_step="reinstall the Session Manager plugin, or use --transport native") from None
        self._pump = asyncio.ensure_future(self._pump_plugin(self._proc))

    async def _pump_plugin(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if PLUGIN_PORT_TAKEN in text:
                self._plugin_port_taken = True
            if text and not text.startswith("Connection accepted"):
                self.report(f"plugin: {text}")

    def _release_held_port(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    async def _abandon_plugin_session(self) -> None:
        """End the session whose plugin could not listen, before starting another."""
        self._release_held_port()
        if self.session_id:
            await self._terminate_api(self.session_id)
        if self._proc is not None:
            await _stop_process(self._proc)
        if self._pump is not None:
            self._pump.cancel()
        self._proc, self._pump, self._plugin_port_taken = None, None, False

    async def _wait_ready(self) -> None:
        """Ready means PostgreSQL answered through the tunnel, not that a port listens."""
        assert self.db is not None
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while True:
            if self._plugin_port_taken:
                # Said by the plugin, which may then linger until its session ends (seen: 20 s and more).
                raise _busy(self.local_port)
            if self._proc is not None and self._proc.returncode is not None:
                if self._pump is not None:  # its last lines say why
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
                raise self._plugin_failed(self._proc.returncode)
            if self._ps is not None and self._ps.closed:
                raise TunnelNotReadyError(f"the data channel of session {self.session_id} closed before the tunnel "
                                          f"was ready", next_step=f"invoke doctor --env {self.cfg.name}")
            try:
                if self.target:
                    await probe_open(self.local_host, self.local_port, timeout=min(PROBE_TIMEOUT, self.ready_timeout))
                else:
                    await probe(self.local_host, self.local_port, timeout=min(PROBE_TIMEOUT, self.ready_timeout))
                return
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                last = type(exc).__name__ if isinstance(exc, asyncio.IncompleteReadError | TimeoutError) else str(exc)
            if time.monotonic() >= deadline:
                what = f"target {self.target}" if self.target else "PostgreSQL"
                raise TunnelNotReadyError(
                    f"session {self.session_id} is open but {what} at {self.db.address}:{self.db.port} did not "
                    f"answer through it within {self.ready_timeout:g} s ({last})",
                    next_step=f"invoke doctor --env {self.cfg.name} (is it up; its security group must allow the "
                              f"relay)")
            await asyncio.sleep(0.05 if self.mode == "plugin" else 0.2)

    def _plugin_failed(self, code: int) -> OpsError:
        # An old plugin reads the literal variable name as the answer and fails at once; one that
        # already carried this tunnel clearly reads the environment.
        if "ready" not in self.timings and not transport_mod.supports_env_handoff(self._plugin_version):
            return transport_mod.old_plugin_error(self._plugin_version)
        if self._plugin_port_taken:
            return _busy(self.local_port)
        return OpsError(f"{transport_mod.PLUGIN} exited with code {code} before the tunnel was ready",
                        next_step="see its output above, or use --transport native")

    # ---- connections ----
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        self._last_activity = time.monotonic()
        try:
            if not self._ps_ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ps_ready.wait(), CONNECTION_WAIT)
            session = self._ps
            if session is None or not self._ps_ready.is_set() or session.closed:
                writer.close()
                return
            await session.handle_connection(reader, writer)
        except Exception as exc:  # one connection failing must not take the tunnel down
            self.report(f"connection ended with an error: {exc}")
            writer.close()
        finally:
            self._active -= 1
            self._last_activity = time.monotonic()

    async def _keepalive_loop(self) -> None:
        """Session Manager ends sessions idle for its idle timeout; an empty connection through the tunnel
        is traffic for the service, while PostgreSQL logs nothing for a connection that sends no bytes."""
        while True:
            await asyncio.sleep(max(1.0, self.keepalive / 4))
            idle = time.monotonic() - self._last_activity
            if self._active or self.phase != "ready" or idle < self.keepalive:
                continue
            with contextlib.suppress(OSError, TimeoutError):
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(self.local_host, self.local_port), 5)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self._last_activity = time.monotonic()

    # ---- supervision ----
    async def _wait_channel_end(self) -> tuple[bool, str]:
        """(dropped, why) once the current data channel (or plugin) has ended."""
        if self._proc is not None:
            code = await self._proc.wait()
            return True, f"session-manager-plugin exited with code {code}"
        from ops.ssm.errors import ChannelClosed

        session = self._ps
        try:
            await session.wait_closed()
            why = f"closed by the agent: {session.close_output}" if session.close_output else "closed by the agent"
            dropped = False
        except ChannelClosed as exc:
            why, dropped = exc.message, True
        self._ps_ready.clear()
        return dropped, why

    async def _resume_in_place(self, session_id: str) -> bool:
        """Native client: ResumeSession and carry on over the new websocket with every stream and local
        connection intact (the data channel resends what the drop lost). False when that is not possible."""
        session = self._ps
        if self.mode != "native" or session is None or session.closed:
            return False
        for attempt, delay in enumerate((0.0, *BACKOFF[:4])):
            await asyncio.sleep(delay)
            try:
                response = await self._resume_session(session_id)
                await session.resume(stream_url=response["StreamUrl"], token=response["TokenValue"])
                self._ps_ready.set()
                # With connections open, they are the check, as for AWS's plugin, which resumes with no probe at
                # all (session-manager-plugin src/sessionmanagerplugin/session/sessionhandler.go
                # ResumeSessionHandler: ResumeSession, then DataChannel.Reconnect). A probe is one more stream
                # behind their unread data: behind a slow reader of a big result it outlasted the ready timeout,
                # and the tunnel gave up the resumed session and dropped the very connections it had kept.
                # With none open, nothing delays the probe.
                if not self._active:
                    await self._wait_ready()
                return True
            except (OpsError, OSError) as exc:
                if await self._session_status(session_id) in ENDED_STATUSES:
                    return False
                self.report(f"resume of session {session_id} failed ({exc}); attempt {attempt + 1}")
                if "TargetNotConnected" in str(exc):
                    return False
        return False

    async def _discard_transport(self) -> None:
        self._ps_ready.clear()
        self._plugin_port_taken = False
        session, self._ps = self._ps, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
        proc, self._proc = self._proc, None
        if proc is not None:
            await _stop_process(proc)
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def _reconnect(self, *, dropped: bool, why: str) -> None:
        started = time.monotonic()
        old = self.session_id
        what = "dropped" if dropped else "ended"
        self.report(f"data channel {what} ({why}); reconnecting, local port {self.local_port} stays open")
        if dropped and old and await self._resume_in_place(old):
            self.reconnects += 1
            self.report(f"reconnected in {time.monotonic() - started:.1f} s (resumed session {old}; open "
                        f"connections kept); reconnects so far: {self.reconnects}")
            return
        await self._discard_transport()
        if old and await self._session_status(old) in ENDED_STATUSES:
            raise self._ended("ended while the data channel was down")
        # The plugin resumes by itself; when it gives up and exits, a new plugin for the same session id
        # collides with the unix socket the old one left behind, so the plugin gets a new session. So does
        # the native client when it could not resume in place: a second client on the old session would
        # wait for a handshake that the agent, which kept its side of the session, never sends again.
        attempt = 0
        last_error = ""
        while True:
            try:
                if old in self.open_sessions:
                    await self._terminate_api(old)
                if self.mode == "plugin" and self._held is None:
                    # The old plugin let the port go: hold it until the new one listens on it (reserve_port).
                    self._held = reserve_port(self.local_host, self.local_port)
                await self._open()
                await self._wait_ready()
                self._release_held_port()
            except (OpsError, SessionError, OSError) as exc:
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                attempt += 1
                message = str(exc) + (f"; next: {exc.next_step}" if isinstance(exc, OpsError) and exc.next_step
                                      else "")
                if message != last_error:
                    self.report(f"reconnect failed: {message}")
                    last_error = message
                self.report(f"retrying in {delay:g} s (attempt {attempt + 1})")
                await self._discard_transport()
                if self.session_id and self.session_id != old:
                    await self._terminate_api(self.session_id)
                await asyncio.sleep(delay)
                continue
            self.reconnects += 1
            self.report(f"reconnected in {time.monotonic() - started:.1f} s (new session {self.session_id}); "
                        f"reconnects so far: {self.reconnects}")
            return

    async def _cleanup(self) -> None:
        self.phase = "stopping"
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self._server is not None:
            self._server.close()
        session, self._ps = self._ps, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()  # tells the agent to terminate (TerminateSession flag)
        for sid in list(self.open_sessions):
            await self._terminate_api(sid)
        if self._proc is not None:
            await _stop_process(self._proc)
        if self._pump is not None:
            self._pump.cancel()
        if self._sock is not None:
            self._sock.close()
        self._release_held_port()


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        # After TerminateSession the plugin exits by itself; give it a moment, then insist.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 1.0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 3.0)


# ---- a pool of sessions behind one port ------------------------------------------------------

class Pool:
    """N sessions behind one local port (`--sessions N`): one Session Manager session carries ~1 MB/s on
    AWS (the agent reads 1 KiB and sleeps ~1 ms), so parallel work needs parallel sessions.

    Each session is a Supervisor of its own on a private loopback port (its readiness probe and
    keep-alive go there, so they test that session and no other): opened ahead, resumed or replaced on
    its own. Each new connection on the shared port goes to the least-loaded ready session, handed to
    the native client directly or, with the plugin (one process per session), copied to its port. A
    session Session Manager ended on purpose leaves the pool for good; closing the pool ends them all."""

    def __init__(self, cfg: EnvConfig, *, sessions: int, local_host: str = LOCAL_HOST, local_port: int = 0,
                 reason: str = "", transport: str = "auto", instance: str = "", host: str = "",
                 report: Report = stderr_report, on_ready: Callable[[TunnelInfo], None] | None = None,
                 on_change: Callable[[Pool], None] | None = None, keepalive: float | None = None,
                 ready_timeout: float = READY_TIMEOUT, target: str = "") -> None:
        check_reason(reason)
        self.cfg = cfg
        self.target = target
        self.size = sessions
        self.local_host = local_host
        self.local_port = local_port
        self.requested_transport = transport
        self.instance = instance
        self.host = host
        self.report = report
        self.on_ready = on_ready
        self.on_change = on_change
        self._lane_args: dict[str, Any] = {"reason": reason, "instance": instance, "host": host,
                                           "keepalive": keepalive, "ready_timeout": ready_timeout, "target": target}
        self.phase = "init"
        self.mode = ""
        self.relay: RelayInfo | None = None
        self.db: DatabaseInfo | None = None
        self.info: TunnelInfo | None = None
        self.lanes: list[Supervisor] = []
        self.ended: list[Supervisor] = []  # ended on purpose: never used or reopened again
        # Connections ever given to each lane: among equally loaded lanes the least used one gets the next.
        self._given: dict[int, int] = {}
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self.timings: dict[str, float] = {}

    # What the state file records, named as a Supervisor names it.
    @property
    def session_id(self) -> str:
        return ",".join(lane.session_id for lane in self.lanes if lane.session_id)

    @property
    def reconnects(self) -> int:
        return sum(lane.reconnects for lane in (*self.lanes, *self.ended))

    @property
    def open_sessions(self) -> list[str]:
        return [sid for lane in (*self.lanes, *self.ended) for sid in lane.open_sessions]

    def lane_stats(self) -> list[LaneStats]:
        return [stat for lane in self.lanes for stat in lane.lane_stats()]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def run(self) -> None:
        tasks: dict[asyncio.Future[None], Supervisor] = {}
        try:
            await self._run(tasks)
        finally:
            self.phase = "stopping"
            if self._server is not None:
                self._server.close()
            for task in tasks:
                task.cancel()
            # Each session's own run() terminates it on the way out; they end side by side.
            if tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT + 5))
            if self._sock is not None:
                self._sock.close()

    async def _run(self, tasks: dict[asyncio.Future[None], Supervisor]) -> None:
        self.timings["run"] = time.monotonic()
        self.mode = transport_mod.choose(self.requested_transport)
        self._sock = bind_listener(self.local_host, self.local_port)
        self.local_port = self._sock.getsockname()[1]
        self._server = await asyncio.start_server(self._on_connection, sock=self._sock)
        if self.requested_transport == "auto":
            self.report(f"transport: {self.mode}" + (" (session-manager-plugin found; one process per session)"
                                                     if self.mode == "plugin" else " (built-in client)"))
        self.phase = "discovering"
        self.report(f"finding the relay and the database of {self.cfg.name}...")
        self._changed()
        self.relay, self.db = await discover(self.cfg, instance=self.instance, host=self.host, target=self.target)
        self.report(describe_found(self.relay, self.db))
        self.phase = "starting"
        self.report(f"starting a pool of {self.size} Session Manager sessions...")
        self._changed()
        ready = [asyncio.Event() for _ in range(self.size)]
        for n, event in enumerate(ready, 1):
            lane = Supervisor(self.cfg, local_host=self.local_host, local_port=0, transport=self.mode,
                              report=self._lane_report(n), on_ready=_setter(event),
                              on_change=self._lane_changed, discovered=(self.relay, self.db), **self._lane_args)
            self.lanes.append(lane)
            tasks[asyncio.ensure_future(lane.run())] = lane

        async def every_one_ready() -> None:
            for event in ready:
                await event.wait()

        all_ready: asyncio.Future[None] = asyncio.ensure_future(every_one_ready())
        try:
            done, _ = await asyncio.wait({all_ready, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            all_ready.cancel()
        for task in done:
            if task is not all_ready:
                raise self._lane_error(task)  # one session could not start: the pool does not start either
        self.timings["ready"] = time.monotonic()
        self.info = self._info()
        self.phase = "ready"
        self.report(f"ready: {self.size} sessions carry the tunnel "
                    f"({self.timings['ready'] - self.timings['run']:.2f} s since start)")
        if self.on_ready is not None:
            self.on_ready(self.info)
        self._changed()
        while tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                lane = tasks.pop(task)
                error = self._lane_error(task)
                if not isinstance(error, SessionEndedError):
                    raise error
                self.lanes.remove(lane)
                self.ended.append(lane)
                if not self.lanes:
                    raise error
                self.report(f"{error.message}; the pool goes on with {len(self.lanes)} session(s)")
                self.info = self._info()
                self._lane_changed(lane)

    def _lane_report(self, n: int) -> Report:
        def report(line: str) -> None:
            self.report(f"session {n}/{self.size}: {line}")

        return report

    def _lane_changed(self, _lane: Supervisor) -> None:
        if self.phase in ("ready", "reconnecting"):
            # `invoke tunnels` says reconnecting while any session is; new connections go to the others.
            self.phase = "reconnecting" if any(lane.phase == "reconnecting" for lane in self.lanes) else "ready"
        self._changed()

    def _lane_error(self, task: asyncio.Future[None]) -> BaseException:
        error = None if task.cancelled() else task.exception()
        return error or OpsError("a session of the pool stopped without an error", next_step="run it again")

    def _info(self) -> TunnelInfo:
        assert self.relay is not None and self.db is not None
        ids = tuple(lane.session_id for lane in self.lanes)
        return TunnelInfo(env=self.cfg.name, local_host=self.local_host, local_port=self.local_port,
                          session_id=ids[0] if ids else "", transport=self.mode, db_host=self.db.address,
                          db_port=self.db.port, db_name=self.db.name, db_user=self.db.username,
                          instance_id=self.relay.instance_id, sessions=ids, stats=self.lane_stats,
                          live=functools.partial(LiveState.of, self))

    def pick(self) -> Supervisor | None:
        """The least-loaded ready session (fewest open connections, then fewest given so far); while none
        is ready (all reconnecting), the least-loaded of them, whose connection waits for it."""
        candidates = [lane for lane in self.lanes if lane.phase == "ready"] or list(self.lanes)
        if not candidates:
            return None
        return min(candidates, key=lambda lane: (lane.connections, self._given.get(id(lane), 0)))

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lane = self.pick()
        if lane is None or self.phase in ("init", "stopping"):
            writer.close()
            return
        self._given[id(lane)] = self._given.get(id(lane), 0) + 1
        if lane.mode == "native":
            await lane._on_connection(reader, writer)
        else:
            await self._forward(lane, reader, writer)

    async def _forward(self, lane: Supervisor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Plugin sessions: copy the connection to the plugin's own port, counting bytes for the session."""
        lane._active += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(lane.local_host, lane.local_port), CONNECTION_WAIT)
        except (OSError, TimeoutError) as exc:
            lane._active -= 1
            self.report(f"connection refused by session {lane.session_id}'s plugin: {exc}")
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, outbound: bool) -> None:
            try:
                while data := await src.read(65536):
                    if outbound:
                        lane.bytes_sent += len(data)
                    else:
                        lane.bytes_received += len(data)
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer, True), copy(up_reader, writer, False))
        finally:
            lane._active -= 1
            lane._last_activity = time.monotonic()
            for w in (up_writer, writer):
                w.close()


Runner = Supervisor | Pool


def _setter(event: asyncio.Event) -> Callable[[TunnelInfo], None]:
    def on_ready(_info: TunnelInfo) -> None:
        event.set()

    return on_ready


def make_runner(cfg: EnvConfig, *, sessions: int = 1, **kwargs: Any) -> Runner:
    """One session: today's Supervisor on the port itself; more: a Pool of them behind it."""
    if sessions == 1:
        return Supervisor(cfg, **kwargs)
    return Pool(cfg, sessions=sessions, **kwargs)


def check_sessions(sessions: int) -> int:
    if not 1 <= sessions <= facts.MAX_TUNNEL_SESSIONS:
        raise OpsError(f"--sessions {sessions} is out of range", next_step=f"use 1 to {facts.MAX_TUNNEL_SESSIONS}")
    return sessions


# ---- foreground / background / context manager -----------------------------------------------

def run_tunnel(cfg: EnvConfig, *, local_port: int | None = None, reason: str = "", transport: str = "auto",
               instance: str = "", host: str = "", background: bool = False, out: TextIO | None = None,
               report: Report = stderr_report, sessions: int | None = None, target: str = "") -> None:
    """`invoke tunnel`: run until Ctrl-C / SIGTERM (returns normally), or detach with `background`.
    `sessions`: how many Session Manager sessions carry it (default: the env's [tunnel] sessions);
    `target`: one of the env's [[targets]] instead of its database."""
    if target:
        target_info(cfg, target)  # an unknown name fails before anything starts
    check_reason(reason)  # before anything starts, foreground or background
    port = cfg.tunnel.local_port if local_port is None else local_port
    count = check_sessions(cfg.tunnel.sessions if sessions is None else sessions)
    out = out or sys.stdout
    if background:
        record = start_background(cfg, local_port=port, reason=reason, transport=transport, instance=instance,
                                  host=host, sessions=count, target=target)
        print(describe_ready(cfg, _record_info(record), background=True, target=target), file=out, flush=True)
        print(f"log: {record.log}", file=out, flush=True)
        return
    transport_mod.choose(transport)  # plugin missing / unknown transport: fail before anything else
    asyncio.run(_run_foreground(cfg, local_port=port, reason=reason, transport=transport, instance=instance,
                                host=host, out=out, report=report, background=False, sessions=count, target=target))


class Meter:
    """Bytes and current MB/s per session from successive LaneStats samples (`invoke tunnels`, progress)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def sample(self, stats: list[LaneStats], now: float) -> list[tuple[str, int, float, int]]:
        """(session id, bytes, MB/s since the previous sample, connections) for each session."""
        rows = []
        for stat in stats:
            before, before_bytes = self._last.get(stat.session_id, (now, stat.total))
            rate = (stat.total - before_bytes) / (now - before) / 1e6 if now > before else 0.0
            self._last[stat.session_id] = (now, stat.total)
            rows.append((stat.session_id, stat.total, round(max(rate, 0.0), 2), stat.connections))
        return rows


METER_INTERVAL = 1.0


async def _run_foreground(cfg: EnvConfig, *, local_port: int, reason: str, transport: str, instance: str,
                          host: str, out: TextIO, report: Report, background: bool, sessions: int = 1,
                          target: str = "") -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def on_signal(name: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        report(f"{name}: terminating the session and stopping")
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    record = tunnels_state.claim(tunnels_state.TunnelRecord(
        env=cfg.name, pid=os.getpid(), background=background, region=cfg.region, env_file=str(cfg.source),
        log=str(tunnels_state.log_path(cfg.name)) if background else ""))
    secret_arn = ""

    def on_ready(info: TunnelInfo) -> None:
        print(describe_ready(cfg, info, background=background, secret_arn=secret_arn, target=target), file=out,
              flush=True)

    def on_change(sup: Runner) -> None:
        nonlocal record, secret_arn
        if sup.db is not None:
            secret_arn = sup.db.secret_arn
        record = tunnels_state.update(
            record, **LiveState.of(sup).recorded(), local_host=sup.local_host, local_port=sup.local_port,
            transport=sup.mode, instance_id=sup.relay.instance_id if sup.relay else "",
            db_host=sup.db.address if sup.db else "",
            db_port=sup.db.port if sup.db else 0, db_name=sup.db.name if sup.db else "",
            db_user=sup.db.username if sup.db else "")

    runner = make_runner(cfg, sessions=sessions, local_port=local_port, reason=reason, transport=transport,
                         instance=instance, host=host, report=report, on_ready=on_ready, on_change=on_change,
                         target=target)

    async def meter() -> None:
        # Bytes and MB/s per session for `invoke tunnels`; the file is written only when they change.
        nonlocal record
        sampler = Meter()
        while True:
            await asyncio.sleep(METER_INTERVAL)
            lanes = tuple(sampler.sample(runner.lane_stats(), time.monotonic()))
            if lanes != record.lanes:
                record = tunnels_state.update(record, lanes=lanes)

    metering = asyncio.ensure_future(meter())
    try:
        await runner.run()
    except asyncio.CancelledError:
        if not stopping:
            raise
        report("stopped; session terminated" if sessions == 1 else f"stopped; {sessions} sessions terminated")
    finally:
        metering.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        tunnels_state.release(record)


def _record_info(record: tunnels_state.TunnelRecord) -> TunnelInfo:
    return TunnelInfo(env=record.env, local_host=record.local_host, local_port=record.local_port,
                      session_id=record.session_id, transport=record.transport, db_host=record.db_host,
                      db_port=record.db_port, db_name=record.db_name, db_user=record.db_user,
                      instance_id=record.instance_id)


def start_background(cfg: EnvConfig, *, local_port: int, reason: str = "", transport: str = "auto",
                     instance: str = "", host: str = "", timeout: float = BACKGROUND_START_TIMEOUT,
                     sessions: int = 1, target: str = "") -> tunnels_state.TunnelRecord:
    """Start a detached tunnel process and return its record once it is ready (or raise its error)."""
    return launch_detached(cfg, module="ops.tunnel", transport=transport, timeout=timeout,
                           args=["--local-port", str(local_port), "--transport", transport, "--sessions", str(sessions),
                                 "--background"],
                           options=(("--reason", reason), ("--instance", instance), ("--host", host),
                                    ("--target", target)))


def launch_detached(cfg: EnvConfig, *, module: str, transport: str, args: Sequence[str],
                    options: Sequence[tuple[str, str]], timeout: float) -> tunnels_state.TunnelRecord:
    """`python -m MODULE` for cfg, detached (the tunnel or the auth tunnel child), and its record once it is ready;
    its own error line if it exits first. `options` with a value are passed as one `--flag=value` argument."""
    transport_mod.choose(transport)
    existing = tunnels_state.read(cfg.name)
    if existing is not None:
        raise tunnels_state.TunnelExistsError(
            f"a tunnel to {cfg.name} is already running on this machine (port {existing.local_port}, "
            f"pid {existing.pid})", next_step=f"use it, or invoke tunnel-close --env {cfg.name}")
    tunnels_state.tunnels_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    log = tunnels_state.log_path(cfg.name)
    argv = [sys.executable, "-m", module, "--env-file", str(cfg.source), "--env", cfg.name, *args]
    for flag, value in options:
        if value:
            argv.append(f"{flag}={value}")  # one argument: a value starting with "--" is not read as a flag
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            record = tunnels_state.read(cfg.name)
            if record is not None and record.pid == proc.pid and record.status == "ready":
                return record
            if proc.poll() is not None:
                raise _error_from_log(log, proc.returncode)
            time.sleep(0.02)
    except BaseException:
        # Ctrl-C while the detached child is still starting: it must not go on to open a tunnel. SIGTERM
        # makes it terminate a session it may already have; SIGKILL only if it does not exit.
        _stop_starting_child(proc)
        raise
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(CLEANUP_TIMEOUT)
    raise OpsError(f"the background tunnel to {cfg.name} was not ready within {timeout:g} s",
                   next_step=f"see {log}, or run it in the foreground: invoke tunnel --env {cfg.name}")


def _stop_starting_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(CLEANUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _error_from_log(log: Path, code: int) -> OpsError:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    error = next((line for line in reversed(lines) if line.startswith("error: ")), "")
    if error:
        message, _, next_step = error.removeprefix("error: ").partition("; next: ")
        return OpsError(message, next_step=next_step)
    return OpsError(f"the background tunnel exited with code {code} before it was ready", next_step=f"see {log}")


class _TunnelThread:
    """A supervisor on its own event loop in a thread, for synchronous callers."""

    def __init__(self, cfg: EnvConfig, **kwargs: Any) -> None:
        self._supervisor_args = kwargs  # make_runner's: sessions=1 is a plain Supervisor
        self._cfg = cfg
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.info: TunnelInfo | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"tunnel-{cfg.name}", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()

            def on_ready(info: TunnelInfo) -> None:
                self.info = info
                self._ready.set()

            try:
                await make_runner(self._cfg, on_ready=on_ready, **self._supervisor_args).run()
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # handed to the caller's thread
                self.error = exc
            finally:
                self._ready.set()

        asyncio.run(main())

    def start(self) -> TunnelInfo:
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self._thread.join(CLEANUP_TIMEOUT)
            raise self.error
        if self.info is None:
            raise OpsError("the tunnel stopped before it was ready")
        return self.info

    def stop(self) -> None:
        deadline = time.monotonic() + 5
        while self._task is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(CLEANUP_TIMEOUT + 5)


@contextmanager
def open_tunnel(cfg: EnvConfig, *, local_port: int = 0, reason: str = "", transport: str = "auto",
                instance: str = "", host: str = "", report: Report | None = None,
                keepalive: float | None = None, sessions: int = 1, target: str = "") -> Iterator[TunnelInfo]:
    """A ready tunnel for the `with` body (free port by default); the session is terminated on exit,
    including on exceptions and Ctrl-C. The supervisor (with reconnects) runs in a background thread.
    `sessions` > 1: a pool of that many sessions behind the port, all terminated on exit."""
    runner = _TunnelThread(cfg, local_port=local_port, reason=reason, transport=transport, instance=instance,
                           host=host, report=report or stderr_report, keepalive=keepalive,
                           sessions=check_sessions(sessions), target=target)
    try:
        yield runner.start()
    finally:
        runner.stop()


# ---- the detached process (`--background`) ---------------------------------------------------

def detached_child_parser(*, module: str, what: str) -> argparse.ArgumentParser:
    """The command-line arguments every detached tunnel child takes (launch_detached writes them)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=f"run one {what} (background child)")
    parser.add_argument("--env-file", required=True, type=Path, help="envs/<name>.toml of the environment")
    parser.add_argument("--env", default="", help="environment name (default: the file's stem)")
    parser.add_argument("--local-port", type=int, default=None, help="local port (0: any free port)")
    parser.add_argument("--reason", default="", help="StartSession reason")
    parser.add_argument("--transport", default="auto", choices=transport_mod.TRANSPORTS, help="transport")
    parser.add_argument("--instance", default="", help="relay instance id override")
    parser.add_argument("--host", default="", help="database HOST[:PORT] override")
    parser.add_argument("--sessions", type=int, default=None, help="sessions behind the port (default: the env's)")
    return parser


def child_parser() -> argparse.ArgumentParser:
    """The background child's command line (start_background writes it)."""
    parser = detached_child_parser(module="ops.tunnel", what="tunnel")
    parser.add_argument("--target", default="", help="one of the env's [[targets]] instead of its database")
    parser.add_argument("--background", action="store_true", help="record the tunnel as a background one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = child_parser().parse_args(argv)
    try:
        path: Path = args.env_file
        cfg = parse_env(args.env or path.stem, path.read_bytes(), path)
        port = cfg.tunnel.local_port if args.local_port is None else args.local_port
        sessions = check_sessions(cfg.tunnel.sessions if args.sessions is None else args.sessions)
        transport_mod.choose(args.transport)
        asyncio.run(_run_foreground(cfg, local_port=port, reason=args.reason, transport=args.transport,
                                    instance=args.instance, host=args.host, out=sys.stdout, report=stderr_report,
                                    background=args.background, sessions=sessions, target=args.target))
    except OpsError as exc:
        print(f"error: {exc.message}" + (f"; next: {exc.next_step}" if exc.next_step else ""), file=sys.stderr,
              flush=True)
        return 1
    except SessionError as exc:
        env = args.env or args.env_file.stem
        print(f"error: the Session Manager session failed: {exc.message}; next: invoke doctor --env {env}",
              file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
