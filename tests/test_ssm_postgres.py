"""A real PostgreSQL query through the native client and the sandbox endpoint (both port modes)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from ops.ssm.client import PortSession
from tests.ssm_support import EndpointBox, EndpointThread

pytest_plugins = ["tests.ssm_fixtures"]


PG_HOST = "bastionless-pg.cluster.eu-west-1.rds.amazonaws.com"


def query_through_session(box: EndpointBox, pg_port: int) -> list[tuple[object, ...]]:
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
                with psycopg.connect(host="127.0.0.1", port=port, user="app_admin", dbname="postgres",
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
def test_postgres_query_multiplexed(ssm_sandbox: EndpointBox, tunnel_postgres: int) -> None:
    rows = query_through_session(ssm_sandbox, tunnel_postgres)
    assert [(r[0], r[1], len(str(r[2]))) for r in rows] == [(42, "app_admin", 100000)] * 2


@pytest.mark.slow
def test_postgres_query_basic_mode(moto_url: str, relay: str, tunnel_postgres: int,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path_factory.mktemp("pg-basic"),
                              agent_version="3.0.161.0").start()
    try:
        rows = query_through_session(EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url), tunnel_postgres)
    finally:
        endpoint.stop()
    assert [(r[0], r[1]) for r in rows] == [(42, "app_admin")] * 2
