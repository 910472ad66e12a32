"""The sandbox's RDS front: what RDS does in front of PostgreSQL, so IAM database auth can be tested
offline. Real PostgreSQL cannot check IAM tokens; this front sits where the relay's agent connects
for the database host and does RDS's side of the start-up:

- TLS only (RDS with `rds.force_ssl`), with the sandbox CA's certificate for the RDS host name;
- a role that is a member of `rds_iam` is asked for a cleartext password, which must be an IAM token
  (`ops.rdsauth.verify`: connect action, DBUser, host:port, expiry, SigV4 signature against the
  sandbox identity's secret key, and the signer's `db_user` tag = the ABAC policy); the session is then
  handed to the real PostgreSQL as that role over its private Unix socket (trusted there, like RDS's
  own hand-off after PAM), and from then on bytes pass through;
- every other role (the master user: break-glass) goes to PostgreSQL over TCP, which does SCRAM with
  the client itself, so the master password still works;
- a CancelRequest is passed on to PostgreSQL.

A refused token gets RDS's own message, `PAM authentication failed for user "<user>"`; the reason
(never the token) goes to the front's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops import pgstream, pgwire, rdsauth

IamMember = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class FrontConfig:
    host_name: str  # the RDS endpoint name: in the certificate and in every token
    port: int  # the RDS port as advertised (the token's port)
    region: str
    pg_port: int  # the real PostgreSQL on 127.0.0.1 (SCRAM pass-through, cancel)
    pg_socket_dir: Path  # its private Unix socket: the trusted hand-off for IAM roles
    cert: Path
    key: Path


class RdsFront:
    def __init__(self, config: FrontConfig, *, keys: Callable[[str], rdsauth.SigningKey | None],
                 iam_member: IamMember, log: Callable[[str], None] = lambda _line: None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self._keys = keys
        self._iam_member = iam_member
        self._log = log
        self._clock = clock
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._tls.load_cert_chain(str(config.cert), str(config.key))

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, pgwire.ProtocolError) as exc:
            self._log(f"connection dropped during start-up: {type(exc).__name__}")
            await pgstream.close(writer)
        except asyncio.CancelledError:
            # Stopping. Ending normally: Python 3.11's start_server callback logs cancelled connection tasks.
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        while True:
            packet = await pgstream.read_first(reader)
            if isinstance(packet, pgwire.SSLRequest) and not tls:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._tls)
                tls = True
            elif isinstance(packet, pgwire.GSSENCRequest):
                writer.write(b"N")
                await writer.drain()
            elif isinstance(packet, pgwire.CancelRequest):
                await self._cancel(packet)
                await pgstream.close(writer)
                return
            elif isinstance(packet, pgwire.StartupMessage):
                break
            else:
                raise pgwire.ProtocolError("SSLRequest twice")
        if not tls:
            # What RDS says with rds.force_ssl = 1.
            await self._refuse(writer, f'no pg_hba.conf entry for host "?", user "{packet.user}", '
                                       f'database "{packet.database}", no encryption')
            return
        if await self._iam_member(packet.user):
            await self._iam_login(packet, reader, writer)
        else:
            await self._pass_through(packet, reader, writer)

    async def _refuse(self, writer: asyncio.StreamWriter, message: str, code: str = pgwire.INVALID_AUTHORIZATION
                      ) -> None:
        writer.write(pgwire.error_response(message, code=code))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await pgstream.close(writer)

    async def _iam_login(self, startup: pgwire.StartupMessage, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        writer.write(pgwire.authentication(pgwire.AUTH_CLEARTEXT))
        await writer.drain()
        token = pgwire.decode_password(await pgstream.read_message(reader))
        try:
            claims = rdsauth.verify(token, host=self.config.host_name, port=self.config.port,
                                    region=self.config.region, login_user=startup.user, now=self._clock(),
                                    lookup=self._keys)
        except rdsauth.TokenRefused as exc:
            self._log(f"IAM login refused for {startup.user!r}: {exc}")
            await self._refuse(writer, f'PAM authentication failed for user "{startup.user}"',
                               code=pgwire.INVALID_PASSWORD)
            return
        self._log(f"IAM login {startup.user!r} (key {claims.access_key_id})")
        path = str(self.config.pg_socket_dir / f".s.PGSQL.{self.config.pg_port}")
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(path)
        except OSError as exc:
            await self._refuse(writer, f"the database is not reachable ({exc.strerror})",
                               code=pgwire.CANNOT_CONNECT_NOW)
            return
        up_writer.write(pgwire.startup_message(startup.params, protocol=startup.protocol))
        await pgstream.splice((reader, writer), (up_reader, up_writer))

    async def _pass_through(self, startup: pgwire.StartupMessage, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.config.pg_port)
        except OSError as exc:
            await self._refuse(writer, f"the database is not reachable ({exc.strerror})",
                               code=pgwire.CANNOT_CONNECT_NOW)
            return
        up_writer.write(pgwire.startup_message(startup.params, protocol=startup.protocol))
        await pgstream.splice((reader, writer), (up_reader, up_writer))

    async def _cancel(self, packet: pgwire.CancelRequest) -> None:
        with contextlib.suppress(OSError):
            _, up_writer = await asyncio.open_connection("127.0.0.1", self.config.pg_port)
            up_writer.write(pgwire.cancel_request(packet.pid, packet.secret))
            await up_writer.drain()
            await pgstream.close(up_writer)


def superuser_membership(*, socket_dir: Path, port: int, superuser: str = "postgres") -> IamMember:
    """Whether a role may log in with IAM: a member of `rds_iam` (what RDS's pg_hba checks), asked of
    PostgreSQL over its private socket."""
    import psycopg

    async def member(role: str) -> bool:
        async with await psycopg.AsyncConnection.connect(host=str(socket_dir), port=port, user=superuser,
                                                         dbname="postgres", autocommit=True) as conn:
            # Direct membership, which is how `invoke db-access` grants it.
            cur = await conn.execute(
                "select exists (select 1 from pg_auth_members m join pg_roles g on g.oid = m.roleid "
                "join pg_roles r on r.oid = m.member where g.rolname = 'rds_iam' and r.rolname = %s)", (role,))
            row = await cur.fetchone()
            return bool(row and row[0])

    return member


def probe(port: int, *, timeout: float = 2.0) -> bool:
    """Health: the front answers an SSLRequest with 'S' (TLS on offer), as RDS does."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(pgwire.ssl_request())
            return sock.recv(1) == b"S"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m ops.sandbox.rds_front ...`: the sandbox manager's RDS front process (ops/sandbox/manager.py)."""
    import argparse
    import signal
    import sys

    from ops.sandbox import identities

    parser = argparse.ArgumentParser(prog="python -m ops.sandbox.rds_front")
    parser.add_argument("--port", type=int, required=True, help="loopback port the relay's agent connects to")
    parser.add_argument("--host-name", required=True, help="the RDS endpoint name (certificate, tokens)")
    parser.add_argument("--rds-port", type=int, required=True, help="the RDS port as advertised")
    parser.add_argument("--region", required=True)
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--pg-socket-dir", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    config = FrontConfig(host_name=args.host_name, port=args.rds_port, region=args.region, pg_port=args.pg_port,
                         pg_socket_dir=args.pg_socket_dir, cert=args.cert, key=args.key)

    def log(line: str) -> None:
        print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}", file=sys.stderr, flush=True)

    # Keys are read at each login: people provisioned after the front started are known at once.
    front = RdsFront(config, keys=lambda key_id: identities.signing_keys().get(key_id),
                     iam_member=superuser_membership(socket_dir=args.pg_socket_dir, port=args.pg_port), log=log)

    async def serve() -> None:
        server = await front.serve("127.0.0.1", args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"READY 127.0.0.1:{args.port} for {args.host_name}:{args.rds_port}", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
