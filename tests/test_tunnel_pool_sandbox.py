"""A pool of Session Manager sessions behind one port (`--sessions N`), on the sandbox: moto server, the
local Session Manager endpoint in its AWS-faithful profile, a real PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
import time

import psycopg
import pytest
from psycopg import sql

from ops.tunnel import open_tunnel
from tests.ssm_support import real_plugin
from tests.tunnel_fixtures import TunnelWorld, aws_client, wait_for

pytest_plugins = ["tests.tunnel_fixtures"]
pytestmark = pytest.mark.slow


def _connect(port: int) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host="127.0.0.1", port=port, user="app_admin", dbname="app", sslmode="disable",
                           autocommit=True, connect_timeout=10)


def _copy_sha(port: int, rows: int) -> tuple[str, str]:
    """(sha256 of the rows as they came through the tunnel, sha256 PostgreSQL computed of the same rows)."""
    digest = hashlib.sha256()
    copy = sql.SQL("copy (select md5(i::text) from generate_series(1, {}) i order by i) to stdout").format(rows)
    with _connect(port) as conn, conn.cursor() as cur:
        with cur.copy(copy) as cp:
            for chunk in cp:
                digest.update(bytes(chunk))
        row = cur.execute(sql.SQL("select encode(sha256(string_agg(md5(i::text) || E'\\n', '' order by i)::bytea), "
                                  "'hex') from generate_series(1, {}) i").format(rows)).fetchone()
    assert row is not None
    return digest.hexdigest(), str(row[0])


def test_connections_spread_across_the_pool_and_all_sessions_end_on_close(pg_world: TunnelWorld) -> None:
    cfg = pg_world.add_env("sandbox")
    lines: list[str] = []
    with open_tunnel(cfg, transport="native", sessions=3, reason="INC-7: dump", report=lines.append) as info:
        assert len(info.sessions) == 3 and len(set(info.sessions)) == 3
        active = {s["SessionId"]: s for s in pg_world.active_sessions(info.instance_id)}
        assert set(active) == set(info.sessions)
        assert {s["Reason"] for s in active.values()} == {"INC-7: dump"}
        assert info.stats is not None
        held = [_connect(info.local_port) for _ in range(3)]
        try:
            per_session = {stat.session_id: stat.connections for stat in info.stats()}
            assert per_session == dict.fromkeys(info.sessions, 1)
            assert [conn.execute("select 6 * 7").fetchone() for conn in held] == [(42,)] * 3
            # Traffic is counted per session, on the session that carried it.
            assert all(stat.received > 0 and stat.sent > 0 for stat in info.stats())
            # A fourth connection shares the least-used session, not an arbitrary one.
            extra = _connect(info.local_port)
            assert sorted(stat.connections for stat in info.stats()) == [1, 1, 2]
            extra.close()
        finally:
            for conn in held:
                conn.close()
    assert any("ready: 3 sessions carry the tunnel" in line for line in lines)
    assert pg_world.active_sessions() == []


def test_one_session_dropped_and_resumed_while_the_others_carry_traffic(pg_world: TunnelWorld) -> None:
    cfg = pg_world.add_env("sandbox")
    rows = 90_000  # ~3 MB per connection: several seconds at the faithful agent's ~1 MB/s per session
    lines: list[str] = []
    with open_tunnel(cfg, transport="native", sessions=3, report=lines.append) as info:
        assert info.stats is not None
        results: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def copy() -> None:
            try:
                results.append(_copy_sha(info.local_port, rows))
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=copy) for _ in range(3)]
        for worker in workers:
            worker.start()
        wait_for(lambda: all(s.connections == 1 and s.received > 200_000 for s in info.stats()), timeout=30,
                 what="every session carrying a copy")
        victim = info.sessions[1]
        before = {s.session_id: s.received for s in info.stats()}
        pg_world.endpoint.post(f"/_sandbox/sessions/{victim}/drop")
        wait_for(lambda: any(f"resumed session {victim}" in line for line in lines), timeout=20,
                 what="the dropped session to resume")
        for worker in workers:
            worker.join(120)
        assert not errors, errors
        assert len(results) == 3 and all(got == want for got, want in results)
        # The others went on: only the dropped session reconnected, and each carried its own copy to the end.
        assert sum("reconnected in" in line for line in lines) == 1
        after = {s.session_id: s.received for s in info.stats()}
        assert set(after) == set(info.sessions)
        assert all(after[sid] > before[sid] for sid in info.sessions)
    assert pg_world.active_sessions() == []


def test_a_session_ended_on_purpose_leaves_the_pool_and_is_not_reopened(pg_world: TunnelWorld) -> None:
    cfg = pg_world.add_env("sandbox")
    lines: list[str] = []
    with open_tunnel(cfg, transport="native", sessions=3, report=lines.append) as info:
        assert info.stats is not None
        victim = info.sessions[0]
        aws_client("ssm", pg_world.endpoint.url, "us-east-1").terminate_session(SessionId=victim)
        wait_for(lambda: any("the pool goes on with 2 session(s)" in line for line in lines), timeout=20,
                 what="the pool to let the ended session go")
        time.sleep(1.0)  # a reopen behind the admin's back would take well under this
        active = {s["SessionId"] for s in pg_world.active_sessions()}
        assert active == set(info.sessions[1:])
        assert not any("reconnected" in line for line in lines)
        assert any(f"ended session {victim}" in line for line in lines)
        # New connections go to the sessions left.
        held = [_connect(info.local_port) for _ in range(2)]
        try:
            assert {s.session_id for s in info.stats()} == set(info.sessions[1:])
            assert sorted(s.connections for s in info.stats()) == [1, 1]
            assert [conn.execute("select 1").fetchone() for conn in held] == [(1,), (1,)]
        finally:
            for conn in held:
                conn.close()
    assert pg_world.active_sessions() == []


def test_plugin_pool_runs_one_plugin_per_session(pg_world: TunnelWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_tunnel_sandbox import plugin_processes

    monkeypatch.setenv("BASTIONLESS_SESSION_MANAGER_PLUGIN", real_plugin())
    cfg = pg_world.add_env("sandbox")
    with open_tunnel(cfg, transport="plugin", sessions=2, report=lambda _line: None) as info:
        assert info.transport == "plugin" and len(info.sessions) == 2
        assert len(plugin_processes()) == 2
        assert info.stats is not None
        held = [_connect(info.local_port) for _ in range(2)]
        try:
            assert [conn.execute("select 2").fetchone() for conn in held] == [(2,), (2,)]
            stats = info.stats()
            assert sorted(s.connections for s in stats) == [1, 1]
            assert all(s.received > 0 for s in stats)
        finally:
            for conn in held:
                conn.close()
    assert pg_world.active_sessions() == []
    wait_for(lambda: not plugin_processes(), timeout=5, what="the plugins to exit")


def test_invoke_tunnels_shows_bytes_and_rate_per_session_of_a_background_pool(pg_world: TunnelWorld) -> None:
    from ops import tunnels_state
    from ops.tunnel import start_background
    from tests.tunnel_fixtures import run_cli

    cfg = pg_world.add_env("sandbox")
    record = start_background(cfg, local_port=0, transport="native", sessions=2)
    try:
        assert record.transport == "native" and len(record.session_id.split(",")) == 2
        got, want = _copy_sha(record.local_port, 30_000)  # ~1 MB through one of the two sessions
        assert got == want

        def metered() -> bool:
            current = tunnels_state.read("sandbox")
            return current is not None and len(current.lanes) == 2 and max(size for _s, size, _r, _c in
                                                                                current.lanes) > 900_000

        wait_for(metered, timeout=10, what="the per-session byte counts in the state file")
        listed = run_cli(pg_world, "tunnels")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[1].split()[:4] == ["sandbox", f"127.0.0.1:{record.local_port}", "pool", "of"]
        sessions = [line.strip() for line in lines[2:4]]
        assert {line.split()[1].rstrip(":") for line in sessions} == set(record.session_id.split(","))
        assert all(" MB, " in line and " MB/s now, " in line for line in sessions)
        assert max(float(line.split()[2]) for line in sessions) >= 0.9
    finally:
        closed = run_cli(pg_world, "tunnel-close", "--env", "sandbox")
        assert closed.returncode == 0, closed.stderr
    assert pg_world.active_sessions() == []
