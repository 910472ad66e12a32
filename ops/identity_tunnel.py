"""The tunnel's target seam: what is forwarded, on top of how bytes travel.

- target `raw`: today's plain TCP forwarding (`ops.tunnel`, any transport); clients do their own TLS/auth.
- target `postgres-auth`: the local auth proxy (`ops.authproxy`) in front of that same tunnel. The
  supervised raw tunnel runs on an internal loopback port; the proxy listens on the user's port (or a
  0700 Unix socket directory) and opens each upstream stream through the raw tunnel, so transports
  (native, plugin) and the supervision loop (resume, reconnect) are shared unchanged.

The caller's DB user comes from their AWS identity (STS) looked up in `[[people]]`; tokens are signed
with the same credentials, for the RDS endpoint host:port, one per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from ops import authproxy, aws, dburl, facts, rdsauth, tunnels_state
from ops.config import EnvConfig
from ops.errors import ConfigError, OpsError
from ops.people import person_for

Target = Literal["postgres-auth", "raw"]
SANDBOX_CA = Path(facts.RDS_FRONT_DIR) / facts.RDS_FRONT_CA


@dataclass(frozen=True)
class Caller:
    identity: str
    db_user: str
    arn: str
    boto_session: Any


def choose_target(cfg: EnvConfig, *, raw: bool) -> Target:
    """`--raw`, or an env that lists no people (nobody has a DB identity there yet): plain forwarding."""
    return "raw" if raw or not cfg.people else "postgres-auth"


def resolve_caller(cfg: EnvConfig) -> Caller:
    session: Any = None
    if cfg.sandbox:
        from ops.sandbox.identities import person_session

        session = person_session(cfg)
    session = session or aws.session(cfg)
    sts = session.client("sts", region_name=cfg.region, endpoint_url=aws.endpoint_for(cfg, "sts"))
    arn = str(sts.get_caller_identity()["Arn"])
    person = person_for(cfg.people, arn)
    if person is None:
        raise OpsError(f"your AWS identity {arn} is not in [[people]] of envs/{cfg.name}.toml, so it has no "
                       f"database user", next_step=f"ask an owner of {cfg.name} to add you and run "
                                                   f"invoke db-access --env {cfg.name}; or use --raw")
    return Caller(identity=person.identity, db_user=person.db_user, arn=arn, boto_session=session)


def ca_bundle(cfg: EnvConfig) -> str:
    """The CA that signs the database's certificate: the env's RDS bundle, or the sandbox front's CA."""
    if cfg.sandbox:
        path = aws.state_dir() / SANDBOX_CA
        if not path.is_file():
            raise ConfigError(f"the sandbox has no RDS front CA at {path}", next_step="invoke sandbox up")
        return str(path)
    bundle = dburl.ca_bundle_path(cfg)
    if not bundle:
        raise ConfigError(f"{cfg.source.name}: database.ca_bundle is empty; the auth proxy verifies the database "
                          f"(verify-full) before it sends a token", next_step="set it to certs/rds-global-bundle.pem "
                                                                             "(see certs/README.md)")
    return bundle


class ProxyThread:
    """The auth proxy on its own event loop thread (the raw tunnel has its own)."""

    def __init__(self, proxy: authproxy.AuthProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bastionless-auth-proxy", daemon=True)
        self._servers: list[asyncio.Server] = []

    def start(self, *, host: str, port: int, unix_socket: str = "") -> int:
        self._thread.start()
        if unix_socket:
            server = self._call(self.proxy.serve_unix(Path(unix_socket), port or 5432))
            self._servers.append(server)
            return port or 5432
        server = self._call(self.proxy.serve_tcp(host, port))
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(30)

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                self._call(shutdown())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)


@contextmanager
def open_auth_tunnel(cfg: EnvConfig, *, local_port: int = 0, unix_socket: str = "", reason: str = "",
                     transport: str = "auto", report: Callable[[str], None] | None = None,
                     caller: Caller | None = None, instance: str = "", host: str = "",
                     sessions: int = 1) -> Iterator[Any]:
    """A tunnel whose local end needs no password: yields the raw tunnel's TunnelInfo with the proxy's
    port and the caller's DB user. Everything stops when the block ends."""
    from ops.tunnel import open_tunnel, stderr_report

    say = report or stderr_report
    who = caller or resolve_caller(cfg)
    tls = authproxy.verify_full_context(ca_bundle(cfg))
    with open_tunnel(cfg, local_port=0, reason=reason, transport=transport, report=report, instance=instance,
                     host=host, sessions=sessions) as raw:
        async def through_tunnel() -> authproxy.Stream:
            return await asyncio.open_connection(raw.local_host, raw.local_port)

        proxy = authproxy.AuthProxy(
            upstream=authproxy.Upstream(host_name=raw.db_host, port=raw.db_port, tls=tls),
            open_stream=through_tunnel, identity=authproxy.Identity(db_user=who.db_user, caller=who.identity),
            token=rdsauth.token_source(who.boto_session, region=cfg.region), env=cfg.name, report=say)
        thread = ProxyThread(proxy)
        try:
            port = thread.start(host=raw.local_host, port=local_port, unix_socket=unix_socket)
            host = unix_socket or raw.local_host
            yield dataclasses.replace(raw, local_host=host, local_port=port, db_user=who.db_user)
        finally:
            thread.stop()


def proxy_params(info: Any) -> dburl.ConnectionParams:
    """Connection parameters for the proxy's local end: no password and no TLS settings (the local hop
    is loopback; the proxy does TLS upstream)."""
    return dburl.ConnectionParams(host=info.local_host, hostaddr="", port=info.local_port, dbname=info.db_name,
                                  user=info.db_user, sslmode="")


def url(info: Any) -> str:
    """DATABASE_URL for the proxy: no password, no TLS parameters (the proxy does both upstream), so
    psycopg, psycopg2 and asyncpg all accept it."""
    host = info.local_host
    if host.startswith("/"):
        return f"postgresql://{info.db_user}@/{info.db_name}?host={host}&port={info.local_port}"
    return f"postgresql://{info.db_user}@{host}:{info.local_port}/{info.db_name}"


def break_glass_notice(cfg: EnvConfig, what: str) -> str:
    from ops import aws

    return (f"*** BREAK-GLASS: {what} on {cfg.name} as the master user {cfg.database.username}: its password is "
            f"read from Secrets Manager as the break-glass role {aws.role_name(cfg, aws.BREAK_GLASS)} (MFA). "
            f"Every use is in CloudTrail under your name; say why in --reason. ***")


def describe_ready(cfg: EnvConfig, info: Any, *, caller: str, background: bool = False) -> str:
    stop = (f"invoke tunnel-close --env {cfg.name}" if background
            else f"Ctrl-C (or invoke tunnel-close --env {cfg.name} from another terminal)")
    where = (f"-h {info.local_host} -p {info.local_port}")
    return "\n".join([
        f"tunnel to {cfg.name} ready: {info.local_host}:{info.local_port} -> auth proxy (as {info.db_user}, "
        f"IAM token, TLS verify-full) -> relay {info.instance_id} -> {info.db_host}:{info.db_port}",
        f"  you        {caller} -> DB user {info.db_user} (no password: the proxy signs a token per connection)",
        f"  psql       psql {where} -d {info.db_name}",
        f"  DATABASE_URL={url(info)}",
        "  only your OS user can use this port; --raw gives plain forwarding",
        f"  carried by {_carried(info)}",
        f"stop: {stop}",
    ])


def _carried(info: Any) -> str:
    sessions = getattr(info, "sessions", ()) or (info.session_id,)
    return (f"1 Session Manager session ({sessions[0]})" if len(sessions) == 1
            else f"a pool of {len(sessions)} Session Manager sessions")


def run(cfg: EnvConfig, *, raw: bool = False, local_port: int | None = None, unix_socket: str = "",
        reason: str = "", transport: str = "auto", instance: str = "", host: str = "", background: bool = False,
        out: TextIO | None = None, report: Callable[[str], None] | None = None, sessions: int | None = None,
        target: str = "") -> None:
    """`invoke tunnel`: the auth proxy when the env has people (and not --raw), else plain forwarding.
    `sessions`: Session Manager sessions behind the port (default: the env's [tunnel] sessions);
    `target`: one of the env's [[targets]] (plain forwarding: it is not the database)."""
    from ops.tunnel import check_sessions, run_tunnel

    out = out or sys.stdout
    port = cfg.tunnel.local_port if local_port is None else local_port
    count = check_sessions(cfg.tunnel.sessions if sessions is None else sessions)
    if target and (host or unix_socket):
        raise OpsError("--target forwards to that target; it takes no --host or --unix-socket",
                       next_step=f"invoke tunnel --env {cfg.name} --target {target}")
    if target or choose_target(cfg, raw=raw) == "raw":
        if unix_socket:
            raise OpsError("--unix-socket needs the auth proxy, which --raw turns off",
                           next_step="drop --raw, or drop --unix-socket")
        run_tunnel(cfg, local_port=port, reason=reason, transport=transport, instance=instance, host=host,
                   background=background, out=out, sessions=count, target=target)
        return
    if background:
        record = start_background(cfg, local_port=port, unix_socket=unix_socket, reason=reason, transport=transport,
                                  instance=instance, host=host, sessions=count)
        print(describe_ready(cfg, record, caller=record.db_user, background=True), file=out, flush=True)
        print(f"log: {record.log}", file=out, flush=True)
        return
    serve(cfg, local_port=port, unix_socket=unix_socket, reason=reason, transport=transport, instance=instance,
          host=host, out=out, report=report, sessions=count)


def serve(cfg: EnvConfig, *, local_port: int, unix_socket: str = "", reason: str = "", transport: str = "auto",
          instance: str = "", host: str = "", out: TextIO, report: Callable[[str], None] | None = None,
          detached: bool = False, sessions: int = 1) -> None:
    """Run the auth tunnel until SIGINT/SIGTERM, recorded for `invoke tunnels` / `tunnel-close`."""
    from ops import transport as transport_mod
    from ops.tunnel import stderr_report

    port = local_port
    transport_mod.choose(transport)  # plugin missing / unknown transport: fail before any AWS call
    say = report or stderr_report
    caller = resolve_caller(cfg)
    stop = threading.Event()
    log = str(tunnels_state.log_path(cfg.name)) if detached else ""
    record = tunnels_state.claim(tunnels_state.TunnelRecord(env=cfg.name, pid=os.getpid(), background=detached,
                                                            region=cfg.region, env_file=str(cfg.source), log=log))
    # After the claim, which can refuse: the handlers are put back only once they are ours.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open_auth_tunnel(cfg, local_port=port, unix_socket=unix_socket, reason=reason, transport=transport,
                              report=say, caller=caller, instance=instance, host=host, sessions=sessions) as info:
            # `sessions` too: a SIGKILLed tunnel's record then stays as an orphan that `invoke tunnels` reports
            # and `tunnel-close` ends (tunnels_state.orphan), as for the raw tunnel.
            record = tunnels_state.update(record, status="ready", local_host=info.local_host,
                                          local_port=info.local_port, session_id=info.session_id,
                                          sessions=info.sessions or (info.session_id,),
                                          transport=info.transport, instance_id=info.instance_id,
                                          db_host=info.db_host, db_port=info.db_port, db_name=info.db_name,
                                          db_user=info.db_user)
            print(describe_ready(cfg, info, caller=caller.identity), file=out, flush=True)
            record = _meter_until(stop, record, info)
            say("stopping: terminating the session")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        tunnels_state.release(record)
    say("stopped; session terminated")


def _meter_until(stop: threading.Event, record: tunnels_state.TunnelRecord,
                 info: Any) -> tunnels_state.TunnelRecord:
    """Until `stop`, the state file follows the tunnel: its status and sessions (a reconnect that opened a new
    session: `tunnel-close` must end that one, also after a SIGKILL), and bytes and MB/s per session
    (`invoke tunnels`). Written on change, checked every METER_INTERVAL."""
    import time

    from ops.tunnel import METER_INTERVAL, Meter

    meter = Meter()
    while not stop.wait(METER_INTERVAL):
        changes: dict[str, Any] = {}
        if info.live is not None:
            now = info.live().recorded()
            changes.update({k: v for k, v in now.items() if getattr(record, k) != v})
        if info.stats is not None:
            lanes = tuple(meter.sample(info.stats(), time.monotonic()))
            if lanes != record.lanes:
                changes["lanes"] = lanes
        if changes:
            record = tunnels_state.update(record, **changes)
    return record


def start_background(cfg: EnvConfig, *, local_port: int, unix_socket: str = "", reason: str = "",
                     transport: str = "auto", instance: str = "", host: str = "",
                     timeout: float = 60.0, sessions: int = 1) -> tunnels_state.TunnelRecord:
    """A detached auth tunnel (`python -m ops.identity_tunnel`); its record once ready, or its error."""
    from ops.tunnel import launch_detached

    return launch_detached(cfg, module="ops.identity_tunnel", transport=transport, timeout=timeout,
                           args=["--local-port", str(local_port), "--transport", transport,
                                 "--sessions", str(sessions)],
                           options=(("--unix-socket", unix_socket), ("--reason", reason), ("--instance", instance),
                                    ("--host", host)))


def child_parser() -> argparse.ArgumentParser:
    """The detached auth tunnel's command line (start_background writes it)."""
    from ops.tunnel import detached_child_parser

    parser = detached_child_parser(module="ops.identity_tunnel", what="auth tunnel")
    parser.add_argument("--unix-socket", default="", help="also listen on this Unix socket")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The detached auth tunnel process (started by `invoke tunnel --background`)."""
    from ops.config import parse_env

    args = child_parser().parse_args(argv)
    try:
        path: Path = args.env_file
        cfg = parse_env(args.env or path.stem, path.read_bytes(), path)
        port = cfg.tunnel.local_port if args.local_port is None else args.local_port
        sessions = cfg.tunnel.sessions if args.sessions is None else args.sessions
        serve(cfg, local_port=port, unix_socket=args.unix_socket, reason=args.reason, transport=args.transport,
              instance=args.instance, host=args.host, out=sys.stdout, detached=True, sessions=sessions)
    except OpsError as exc:
        print(f"error: {exc.message}" + (f"; next: {exc.next_step}" if exc.next_step else ""), file=sys.stderr,
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def describe_local_end(cfg: EnvConfig, *, port: int | None = None) -> tuple[dburl.ConnectionParams, str]:
    """What `invoke db-url` says where the env lists people: the auth tunnel's local end as your own DB user,
    with no password anywhere (the proxy signs an IAM token per connection), and no TLS settings."""
    aws.check_account(cfg)
    caller = resolve_caller(cfg)
    params = dburl.ConnectionParams(host=dburl.LOCAL_HOST, hostaddr="",
                                    port=cfg.tunnel.local_port if port is None else port,
                                    dbname=cfg.database.name, user=caller.db_user, sslmode="")
    lines = [f"{cfg.name} database through `invoke tunnel --env {cfg.name}`, as you ({caller.identity}):"]
    lines += [f"  {k:<12}{v}" for k, v in params.keywords().items() if v]
    lines += [f"  DATABASE_URL={params.url()}",
              f"  libpq:      {params.conninfo()}",
              "  password:   none: the tunnel signs a 15-minute IAM token for each connection (no .pgpass, no "
              "prompt)"]
    return params, "\n".join(lines)
