"""A real PostgreSQL query through the native client and the sandbox endpoint (both port modes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from ops.ssm.client import PortSession
from tests.pg_support import start_cluster
from tests.ssm_support import EndpointThread, Sandbox

pytest_plugins = ["tests.ssm_fixtures"]


@pytest.fixture(scope="module")
def sandbox(ssm_sandbox: Sandbox) -> Sandbox:
    """This module's `sandbox`: named apart in the plugin, since every plugin's fixtures are global."""
    return ssm_sandbox

PG_HOST = "bastionless-pg.cluster.eu-west-1.rds.amazonaws.com"


@pytest.fixture(scope="module")
def postgres() -> Iterator[int]:
    cluster = start_cluster("ssm-pg-", superuser="app", auth=["-A", "trust"])
    try:
        yield cluster.port
    finally:
        cluster.stop()


def query_through_session(box: Sandbox, pg_port: int) -> list[tuple[object, ...]]:
    box.map_host(PG_HOST, 5432, ("127.0.0.1", pg_port))
    started = box.start_port_session(host=PG_HOST, port=5432)
    rows: list[tuple[object, ...]] = []

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], ca_file=box.endpoint.ca_file)
        await ps.start()
        server = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def run_query() -> None:
            for _ in range(2):  # a second connection: re-dial in basic mode, a new stream in smux mode
                with psycopg.connect(host="127.0.0.1", port=port, user="app", dbname="postgres",
                                     sslmode="disable", connect_timeout=10) as conn:
                    rows.extend(conn.execute("select 40 + 2, current_user, repeat('x', 100000)").fetchall())

        try:
            await asyncio.to_thread(run_query)
        finally:
            server.close()
            await ps.close()

    asyncio.run(main())
    return rows


@pytest.mark.slow
def test_postgres_query_multiplexed(sandbox: Sandbox, postgres: int) -> None:
    rows = query_through_session(sandbox, postgres)
    assert [(r[0], r[1], len(str(r[2]))) for r in rows] == [(42, "app", 100000)] * 2


@pytest.mark.slow
def test_postgres_query_basic_mode(moto_url: str, relay: str, postgres: int,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path_factory.mktemp("pg-basic"),
                              agent_version="3.0.161.0").start()
    try:
        rows = query_through_session(Sandbox(endpoint=endpoint, relay=relay, moto_url=moto_url), postgres)
    finally:
        endpoint.stop()
    assert [(r[0], r[1]) for r in rows] == [(42, "app")] * 2
