"""The local auth proxy: a PostgreSQL port on this machine that needs no password, because the proxy
logs in upstream as the caller's own DB user with a fresh IAM token (the Cloud SQL Auth Proxy model).

Per local connection:
1. only the OS user who runs the proxy may connect (TCP: the peer's uid from /proc/net/tcp; a Unix
   socket: SO_PEERCRED, in a 0700 directory);
2. SSLRequest/GSSENCRequest are answered `N` (the local hop is loopback; TLS is done upstream), the
   StartupMessage is read;
3. a byte stream to the database is opened through the callable the proxy is given (the tunnel's
   transport; a direct TCP connect in tests), TLS is negotiated on it with verify-full against the real
   RDS host name;
4. the StartupMessage goes upstream as the caller's DB user, with `application_name` marked with the
   caller; RDS's cleartext-password request is answered with a token minted for the RDS endpoint
   host:port (one per connection: tokens live 15 minutes);
5. after AuthenticationOk the bytes are spliced both ways. A CancelRequest (Ctrl-C in psql) is sent
   upstream the same way on a new stream.

Start-up errors (no such role, no rds_iam, token refused, a removed person) reach the client as a
PostgreSQL ErrorResponse whose hint names the fix, and are reported to the proxy's owner the same way.
The token is never logged, printed, or put in an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops import pgstream, pgwire
from ops.errors import OpsError

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[], Awaitable[Stream]]
# (RDS host, RDS port, DB user) -> a fresh token. Signing is local (no AWS call).
TokenSource = Callable[[str, int, str], str]
APP_NAME_MAX = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes
PROC_NET = Path("/proc/net")


class UpstreamRefused(OpsError):
    """The database refused the login during start-up; message and next step name the fix."""


@dataclass(frozen=True)
class Identity:
    db_user: str
    caller: str  # who, for application_name and messages: the AWS identity (e.g. alice@example.com)


@dataclass(frozen=True)
class Upstream:
    host_name: str  # the RDS endpoint: TLS server name and the token's host
    port: int
    tls: ssl.SSLContext


def verify_full_context(ca_bundle: str | Path) -> ssl.SSLContext:
    """libpq's sslmode=verify-full: the chain to the given CA bundle, and the host name."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def marked_application_name(client_app: str, caller: str) -> str:
    """`psql (bastionless: alice@example.com)`: the client's name shortened, never the caller's mark."""
    mark = f" (bastionless: {caller})"
    room = APP_NAME_MAX - len(mark.encode("utf-8"))
    app = (client_app or "client").encode("utf-8")[:max(room, 0)].decode("utf-8", errors="ignore")
    return (app + mark).encode("utf-8")[:APP_NAME_MAX].decode("utf-8", errors="ignore")


# ---- who is on the other end of a local connection -----------------------------------------------


def _proc_addr(ip: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order, port big-endian hex."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    words = [packed[i:i + 4] for i in range(0, len(packed), 4)]
    native = "".join((w[::-1] if sys.byteorder == "little" else w).hex().upper() for w in words)
    return f"{native}:{port:04X}"


def peer_uid(proc_tables: list[str], *, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the client socket `peer` connected to our `local` address, from the text of
    /proc/net/tcp and /proc/net/tcp6 (the client's row: local_address = peer, rem_address = ours)."""
    want_local, want_remote = _proc_addr(*peer), _proc_addr(*local)
    for table in proc_tables:
        for line in table.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 7 and cols[1] == want_local and cols[2] == want_remote:
                return int(cols[7])
    return None


def _unmap(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def connection_uid(writer: asyncio.StreamWriter) -> int | None:
    """The peer's uid, or None where the OS does not tell us (then the caller decides)."""
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None:
        return None
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
    tables: list[str] = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            tables.append((PROC_NET / name).read_text())
    if not tables:
        return None
    return peer_uid(tables, peer=(_unmap(peer[0]), peer[1]), local=(_unmap(local[0]), local[1]))


# ---- explaining start-up failures -------------------------------------------------------------------


def explain(fields: pgwire.ErrorFields, *, db_user: str, env: str) -> UpstreamRefused:
    """The database's start-up error, with the fix for what a person can actually do about it."""
    msg = fields.message
    access = f"invoke db-access --env {env}"
    if fields.code == pgwire.INVALID_PASSWORD or "PAM authentication failed" in msg:
        return UpstreamRefused(
            f"RDS refused the IAM token for DB user {db_user!r} ({msg})",
            next_step=f"check that your AWS identity may rds-db:connect as {db_user} (its db_user tag) and that "
                      f"your clock is right: invoke doctor --env {env}")
    if "is not permitted to log in" in msg:
        return UpstreamRefused(f"DB user {db_user!r} may not log in: removed from envs/{env}.toml? ({msg})",
                               next_step=f"ask an owner of {env} to add you and run {access}")
    if "does not exist" in msg and "role" in msg:
        return UpstreamRefused(f"DB user {db_user!r} does not exist in the {env} database ({msg})",
                               next_step=f"ask an owner of {env} to run {access}")
    return UpstreamRefused(f"the database refused the connection: {msg}", next_step=f"invoke doctor --env {env}")


def not_iam(db_user: str, env: str) -> UpstreamRefused:
    return UpstreamRefused(
        f"DB user {db_user!r} is not set up for IAM database authentication (no such role, or not granted rds_iam)",
        next_step=f"ask an owner of {env} to run invoke db-access --env {env}")


# ---- the proxy ----------------------------------------------------------------------------------------


class AuthProxy:
    def __init__(self, *, upstream: Upstream, open_stream: Opener, identity: Identity, token: TokenSource,
                 env: str, report: Callable[[str], None] = lambda _line: None,
                 allowed_uid: int | None = None) -> None:
        self.upstream = upstream
        self.identity = identity
        self._open_stream = open_stream
        self._token = token
        self._env = env
        self._report = report
        self._allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.logins = 0
        self.refusals = 0

    # ---- listeners ----

    async def serve_tcp(self, host: str, port: int = 0) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port)

    async def serve_unix(self, directory: Path, port: int) -> asyncio.Server:
        """`DIR/.s.PGSQL.<port>`, so `psql -h DIR -p <port>` finds it. DIR is made 0700."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        path = directory / f".s.PGSQL.{port}"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return await asyncio.start_unix_server(self.handle, str(path))

    # ---- one local connection ----

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._report(f"local connection ended during start-up ({type(exc).__name__})")
            await pgstream.close(writer)
        except pgwire.ProtocolError as exc:
            await self._fail(writer, UpstreamRefused(f"not the PostgreSQL protocol: {exc}"),
                             code=pgwire.PROTOCOL_VIOLATION)
        except asyncio.CancelledError:
            # The proxy is stopping. Ending normally: Python 3.11's start_server callback logs a traceback
            # for a cancelled connection task (fixed in 3.12).
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = connection_uid(writer)
        if uid is not None and uid != self._allowed_uid:
            self._report(f"refused a local connection from uid {uid}: this tunnel belongs to uid {self._allowed_uid}")
            await pgstream.close(writer)
            return
        while True:
            packet = await pgstream.read_first(reader)
            if isinstance(packet, pgwire.SSLRequest | pgwire.GSSENCRequest):
                writer.write(b"N")
                await writer.drain()
            elif isinstance(packet, pgwire.CancelRequest):
                await self._cancel(packet)
                await pgstream.close(writer)
                return
            else:
                break
        try:
            up = await self._connect()
        except UpstreamRefused as exc:
            await self._fail(writer, exc, code=pgwire.CONNECTION_FAILURE)
            return
        try:
            first = await self._login(packet, up)
        except UpstreamRefused as exc:
            await pgstream.close(up[1])
            await self._fail(writer, exc)
            return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, pgwire.ProtocolError) as exc:
            await pgstream.close(up[1])
            await self._fail(writer, UpstreamRefused(f"the database closed the connection during start-up "
                                                     f"({type(exc).__name__})",
                                                     next_step=f"invoke doctor --env {self._env}"),
                             code=pgwire.CONNECTION_FAILURE)
            return
        self.logins += 1
        writer.write(first)
        await writer.drain()
        await pgstream.splice((reader, writer), up)

    async def _connect(self) -> Stream:
        """A TLS stream to the database (SSLRequest, then verify-full against the RDS host name)."""
        name = f"{self.upstream.host_name}:{self.upstream.port}"
        try:
            reader, writer = await self._open_stream()
        except (OSError, OpsError) as exc:
            raise UpstreamRefused(f"no stream to {name} ({exc})",
                                  next_step=f"invoke tunnel-close --env {self._env}, then open the tunnel again"
                                  ) from None
        try:
            writer.write(pgwire.ssl_request())
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer != b"S":
                raise UpstreamRefused(f"{name} does not offer TLS; IAM tokens are never sent without it",
                                      next_step=f"invoke doctor --env {self._env}")
            await writer.start_tls(self.upstream.tls, server_hostname=self.upstream.host_name)
        except ssl.SSLCertVerificationError as exc:
            await pgstream.close(writer)
            raise UpstreamRefused(f"the database's TLS certificate is not valid for {self.upstream.host_name} "
                                  f"({exc.verify_message})", next_step="check [database] ca_bundle in the env file"
                                  ) from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            await pgstream.close(writer)
            raise UpstreamRefused(f"TLS with {name} failed ({type(exc).__name__})",
                                  next_step=f"invoke doctor --env {self._env}") from None
        return reader, writer

    async def _login(self, startup: pgwire.StartupMessage, up: Stream) -> bytes:
        """Start-up upstream as our DB user; returns the start-up messages to hand the client (from
        AuthenticationOk to ReadyForQuery)."""
        reader, writer = up
        params: dict[str, Any] = dict(startup.params)
        params["user"] = self.identity.db_user
        # libpq's default database is the user name the client typed: keep what the client meant.
        params["database"] = startup.database
        params["application_name"] = marked_application_name(startup.params.get("application_name", ""),
                                                             self.identity.caller)
        writer.write(pgwire.startup_message(params, protocol=startup.protocol))
        await writer.drain()
        # Everything up to ReadyForQuery is kept back: PostgreSQL refuses a role without LOGIN only after
        # authentication, and that refusal too must reach the client explained.
        kept: list[bytes] = []
        authenticated = False
        while True:
            msg = await pgstream.read_message(reader)
            if msg.kind == b"E":
                raise explain(pgwire.decode_error(msg), db_user=self.identity.db_user, env=self._env)
            if msg.kind == b"R" and not authenticated:
                auth = pgwire.decode_authentication(msg)
                if auth.code == pgwire.AUTH_OK:
                    authenticated = True
                elif auth.code == pgwire.AUTH_CLEARTEXT:
                    token = await asyncio.to_thread(self._token, self.upstream.host_name, self.upstream.port,
                                                    self.identity.db_user)
                    writer.write(pgwire.password_message(token))
                    await writer.drain()
                    continue
                else:
                    raise not_iam(self.identity.db_user, self._env)
            elif (authenticated and msg.kind in (b"S", b"K", b"N", b"Z")) or msg.kind in (b"v", b"N"):
                pass
            else:
                raise pgwire.ProtocolError(f"unexpected message {msg.kind!r} during start-up")
            kept.append(pgwire.encode_message(msg))
            if msg.kind == b"Z":
                return b"".join(kept)

    async def _cancel(self, packet: pgwire.CancelRequest) -> None:
        try:
            _, writer = await self._connect()
        except UpstreamRefused as exc:
            self._report(f"query cancel not delivered: {exc}")
            return
        writer.write(pgwire.cancel_request(packet.pid, packet.secret))
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        await pgstream.close(writer)

    async def _fail(self, writer: asyncio.StreamWriter, exc: UpstreamRefused,
                    code: str = pgwire.INVALID_AUTHORIZATION) -> None:
        self.refusals += 1
        hint = f"next: {exc.next_step}" if exc.next_step else ""
        self._report(f"error: {exc.message}" + (f"; {hint}" if hint else ""))
        writer.write(pgwire.error_response(f"bastionless: {exc.message}", code=code, hint=hint))
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        await pgstream.close(writer)
