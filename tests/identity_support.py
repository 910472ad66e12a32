"""The identity test bed: a real PostgreSQL, the sandbox's RDS front (TLS for the RDS host name, IAM token
checks) in front of it, and a local auth proxy per person, all on one event loop in a background thread
so tests can use blocking clients (psycopg, psql, alembic) against them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3

from ops import authproxy, rdsauth
from ops.sandbox import rds_front, rds_tls
from tests.pg_support import Cluster, start_cluster

T = TypeVar("T")
RDS_HOST = "app.cxyz0sandbox.us-east-1.rds.amazonaws.com"
RDS_PORT = 5432
REGION = "us-east-1"
MASTER = "app_admin"
DB = "app"


@dataclass(frozen=True)
class Person:
    name: str  # the AWS identity (its SSO user name)
    db_user: str
    key_id: str
    secret: str

    def session(self) -> boto3.Session:
        return boto3.Session(aws_access_key_id=self.key_id, aws_secret_access_key=self.secret, region_name=REGION)


PEOPLE = {
    "alice": Person("alice@example.com", "alice", "AKIASANDBOXALICE0001", "alice-sandbox-secret-0123456789abcdefghij"),
    "bob": Person("bob@example.com", "bob", "AKIASANDBOXBOB000002", "bob-sandbox-secret-0123456789abcdefghijkl"),
    # Removed from the env file: the role exists but has lost LOGIN.
    "carol": Person("carol@example.com", "carol", "AKIASANDBOXCAROL0003", "carol-sandbox-secret-0123456789abcdefgh"),
    # A role that was never granted rds_iam.
    "dave": Person("dave@example.com", "dave", "AKIASANDBOXDAVE00004", "dave-sandbox-secret-0123456789abcdefghi"),
    # Has no role until `db-access` creates one.
    "erin": Person("erin@example.com", "erin", "AKIASANDBOXERIN00005", "erin-sandbox-secret-0123456789abcdefghi"),
}


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Bed:
    cluster: Cluster
    certs: rds_tls.FrontCertificate
    loop: LoopThread
    front: rds_front.RdsFront
    front_port: int
    master_password: str
    front_log: list[str] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)

    def superuser_sql(self, sql: str, *, dbname: str = DB) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(host=str(self.cluster.root), port=self.cluster.port, user="postgres", dbname=dbname,
                             autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    def open_front(self) -> Callable[[], Coroutine[Any, Any, authproxy.Stream]]:
        async def opener() -> authproxy.Stream:
            return await asyncio.open_connection("127.0.0.1", self.front_port)
        return opener

    def proxy(self, who: str, *, db_user: str | None = None, token: authproxy.TokenSource | None = None,
              allowed_uid: int | None = None, reports: list[str] | None = None) -> tuple[authproxy.AuthProxy, int]:
        person = PEOPLE[who]
        proxy = authproxy.AuthProxy(
            upstream=authproxy.Upstream(host_name=RDS_HOST, port=RDS_PORT,
                                        tls=authproxy.verify_full_context(self.certs.ca)),
            open_stream=self.open_front(),
            identity=authproxy.Identity(db_user=db_user or person.db_user, caller=person.name),
            token=token or rdsauth.token_source(person.session(), region=REGION),
            env="sandbox", report=(reports.append if reports is not None else lambda _l: None),
            allowed_uid=allowed_uid)
        server = self.loop.run(proxy.serve_tcp("127.0.0.1", 0))
        self.servers.append(server)
        return proxy, int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.loop.stop()
        self.cluster.stop()


def start_bed(tmp: Path, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC), host_name: str = RDS_HOST,
              keys: Callable[[], dict[str, rdsauth.SigningKey]] | None = None) -> Bed:
    """`keys`: the front's key lookup source (default: PEOPLE's fixed keys), read at each login."""
    cluster = start_cluster("identity-pg-", superuser="postgres",
                            auth=["--auth-local=trust", "--auth-host=scram-sha-256"])
    password = "master-" + tmp.name[-8:] + "%:@/"
    loop = LoopThread()
    log: list[str] = []
    bed: Bed | None = None
    try:
        certs = rds_tls.issue(tmp / "certs", host_name=host_name)
        fixed = {p.key_id: rdsauth.SigningKey(secret=p.secret, principal=f"arn:aws:iam::123456789012:user/{p.name}",
                                              db_user=p.db_user) for p in PEOPLE.values()}
        front = rds_front.RdsFront(
            rds_front.FrontConfig(host_name=host_name, port=RDS_PORT, region=REGION, pg_port=cluster.port,
                                  pg_socket_dir=cluster.root, cert=certs.cert, key=certs.key),
            keys=fixed.get if keys is None else (lambda key_id: keys().get(key_id)),
            iam_member=rds_front.superuser_membership(socket_dir=cluster.root, port=cluster.port),
            log=log.append, clock=clock)
        server = loop.run(front.serve())
        bed = Bed(cluster=cluster, certs=certs, loop=loop, front=front,
                  front_port=int(server.sockets[0].getsockname()[1]), master_password=password, front_log=log,
                  servers=[server])
        bed.superuser_sql(f"create database {DB}", dbname="postgres")
        bed.superuser_sql("alter system set log_connections = on", dbname="postgres")
        bed.superuser_sql("select pg_reload_conf()", dbname="postgres")
        bed.superuser_sql("create role rds_iam nologin")
        bed.superuser_sql(f"create role {MASTER} login createrole password '{password.replace(chr(39), '')}'")
        for who in ("alice", "bob", "carol", "dave"):
            bed.superuser_sql(f"create role {who} login")
        for who in ("alice", "bob", "carol"):
            bed.superuser_sql(f"grant rds_iam to {who}")
        bed.superuser_sql("alter role carol nologin")
        return bed
    except BaseException:
        if bed is not None:
            bed.close()
        else:
            loop.stop()
            cluster.stop()
        raise
