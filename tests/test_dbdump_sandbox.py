"""`invoke db-dump` / `db-restore` on the sandbox: a parallel dump through a pool of sessions, restored
through a pool into a second database, compared table by table (row counts and checksums)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ops import dbdump
from ops.config import EnvConfig
from tests.conftest import plain_sandbox_toml
from tests.tiers import needs_tool
from tests.tunnel_fixtures import TunnelWorld

pytest_plugins = ["tests.tunnel_fixtures"]
pytestmark = pytest.mark.slow

TABLES = {"orders": 12_000, "customers": 4_000, "events": 9_000}


def _direct(world: TunnelWorld, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host="127.0.0.1", port=world.pg_port, user="app_admin", dbname=dbname, autocommit=True)


def _fingerprint(world: TunnelWorld, dbname: str) -> dict[str, tuple[int, str]]:
    """Every user table: (row count, md5 of its rows in a fixed order)."""
    with _direct(world, dbname) as conn:
        names = [f"{s}.{t}" for s, t in conn.execute(
            "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE' "
            "and table_schema not in ('pg_catalog', 'information_schema') order by 1, 2").fetchall()]
        found = {}
        for name in names:
            schema, table = name.split(".")
            row = conn.execute(sql.SQL("select count(*), coalesce(md5(string_agg(t::text, ',' order by t::text)), '') "
                                       "from {} t").format(sql.Identifier(schema, table))).fetchone()
            assert row is not None
            found[name] = (int(str(row[0])), str(row[1]))
        return found


def _env_with_secret(world: TunnelWorld, name: str, dbname: str) -> EnvConfig:
    path = world.envs_dir / f"{name}.toml"
    if not path.exists():
        path.write_text(plain_sandbox_toml().replace('name = "app"', f'name = "{dbname}"'))
    cfg = world.add_env(name)
    # The secret as RDS keeps it (moto's placeholder names another user); trust auth ignores the password.
    (db,) = world.client("rds").describe_db_instances(DBInstanceIdentifier=cfg.stack_name)["DBInstances"]
    world.client("secretsmanager").put_secret_value(
        SecretId=db["MasterUserSecret"]["SecretArn"],
        SecretString=json.dumps({"username": "app_admin", "password": "unused"}))
    return cfg


@needs_tool("pg_dump", "needs pg_dump and pg_restore (apt-get install postgresql-client)")
@needs_tool("pg_restore", "needs pg_dump and pg_restore (apt-get install postgresql-client)")
def test_dump_through_a_pool_and_restore_into_a_second_database(pg_world: TunnelWorld, tmp_path: Path) -> None:
    with _direct(pg_world, "app") as conn:
        conn.execute("create schema if not exists shop")
        for table, rows in TABLES.items():
            conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier("shop", table)))
            conn.execute(sql.SQL("create table {} (id bigint primary key, note text, amount numeric)").format(
                sql.Identifier("shop", table)))
            conn.execute(sql.SQL("insert into {} select i, md5(i::text) || repeat('x', i % 50), i * 1.5 "
                                 "from generate_series(1, {}) i").format(sql.Identifier("shop", table), rows))
    with _direct(pg_world, "postgres") as conn:
        conn.execute("drop database if exists restored")
        conn.execute("create database restored")
    source = _env_with_secret(pg_world, "sandbox", "app")
    target = _env_with_secret(pg_world, "copy", "restored")
    lines: list[str] = []
    where = tmp_path / "dumps" / "sandbox"

    summary = dbdump.dump(source, where, jobs=3, transport="native", report=lines.append)
    assert pg_world.active_sessions() == []
    assert any("through 3 session(s)" in line for line in lines), lines
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in where.iterdir())
    assert "dumped " in summary and "through 3 session(s)" in summary
    assert f"written to {where}" in summary and "mode 0700" in summary
    for table in TABLES:
        assert f"shop.{table}" in summary

    done = dbdump.restore(target, where, jobs=3, transport="native", yes=True, report=lines.append)
    assert pg_world.active_sessions() == []
    assert "restored " in done and "into copy (database restored)" in done

    want = _fingerprint(pg_world, "app")
    got = _fingerprint(pg_world, "restored")
    assert {f"shop.{t}" for t in TABLES} <= set(want)
    assert got == want
    assert [got[f"shop.{t}"][0] for t in TABLES] == list(TABLES.values())
