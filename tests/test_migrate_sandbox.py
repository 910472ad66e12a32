"""Database workflows end to end on the sandbox: moto (RDS, Secrets Manager, EC2), the local Session
Manager endpoint speaking the real data-channel protocol, and a password-only PostgreSQL behind the
emulated relay. Every run goes through an ephemeral tunnel, as `invoke migrate` does against AWS.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ops.config import load_env
from ops.errors import AccountMismatchError
from ops.migrate import migrate, migration_status
from ops.tunnel import open_tunnel
from tests.conftest import PROJECT_ROOT
from tests.db_fixtures import (
    FAILING_REVISION,
    PASSWORD,
    Postgres,
    copy_migrations,
    needs_psql,
    reset_schema,
    revision_file,
    tables,
)
from tests.proc_support import descends_from
from tests.ssm_support import free_port
from tests.tunnel_fixtures import TunnelWorld, aws_client, plain_sandbox_toml, run_cli, wait_for

pytest_plugins = ["tests.db_fixtures"]
pytestmark = pytest.mark.slow

SECRET_FORMS = {PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD)}


def slow_ini(tmp: Path, seconds: int = 6) -> Path:
    body = (f"    op.create_table('slow', sa.Column('id', sa.Integer, primary_key=True))\n"
            f"    op.execute('SELECT pg_sleep({seconds})')")
    return copy_migrations(tmp, extra={"0004_slow.py": revision_file("0004", "0003", body)})


def cli(migrate_world: TunnelWorld, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=migrate_world.subprocess_env(**kw))


def lock_holders(pg: Postgres) -> int:
    return int(pg.superuser_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"))


def session_states(migrate_world: TunnelWorld) -> dict[str, str]:
    """Every session the endpoint has seen (DescribeSessions Active + History) -> its status."""
    ssm = aws_client("ssm", migrate_world.endpoint.url, "us-east-1")
    found: dict[str, str] = {}
    for state in ("Active", "History"):
        for sess in ssm.describe_sessions(State=state)["Sessions"]:
            found[sess["SessionId"]] = sess["Status"]
    return found


def no_leak(text: str) -> bool:
    return not any(form in text for form in SECRET_FORMS)


@pytest.fixture()
def migrate_world(db_world: TunnelWorld, postgres: Postgres) -> TunnelWorld:
    reset_schema(postgres)
    assert db_world.active_sessions() == []
    return db_world


def test_upgrade_status_downgrade_upgrade_through_the_tunnel(migrate_world: TunnelWorld, postgres: Postgres) -> None:
    cfg = load_env("sandbox")
    migrate(cfg, yes=True, transport="native")
    assert tables(postgres) == {"alembic_version", "users", "orders"}
    status = migration_status(cfg, transport="native")
    assert status.current == ("0003",) and status.heads == ("0003",) and status.pending == ()
    migrate(cfg, revision="-1", downgrade=True, yes=True, transport="native")
    status = migration_status(cfg, transport="native")
    assert status.current == ("0002",) and status.pending == ("0003",)
    assert "  * 0002  create orders  (current)" in status.format()
    migrate(cfg, yes=True, transport="native")
    assert migration_status(cfg, transport="native").current == ("0003",)
    assert migrate_world.active_sessions() == []
    # Every session this opened was terminated, not just abandoned.
    assert set(session_states(migrate_world).values()) <= {"Terminated"}

    shown = run_cli(migrate_world, "migrate-status", "--env", "sandbox", "--transport", "native")
    assert shown.returncode == 0, shown.stderr
    assert "current: 0003" in shown.stdout and "pending: none" in shown.stdout


def test_two_concurrent_migrations_second_fails_fast(migrate_world: TunnelWorld, postgres: Postgres,
                                                     tmp_path: Path) -> None:
    # Long enough that the second runner (interpreter start + tunnel) finishes well inside it.
    ini = str(slow_ini(tmp_path, seconds=15))
    args = ("migrate", "--env", "sandbox", "--ini", ini, "--transport", "native")
    first = cli(migrate_world, *args)
    try:
        wait_for(lambda: lock_holders(postgres) == 1, timeout=30, what="the first runner to take the lock")
        second = cli(migrate_world, *args)
        _, err2 = second.communicate(timeout=60)
        assert second.returncode == 1
        assert "another migration is running on sandbox" in err2 and "nothing was run" in err2
        assert first.poll() is None, "the second runner should fail while the first still runs"
        out1, err1 = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err1
    assert "sandbox: migrated to head" in out1
    assert "slow" in tables(postgres)
    assert migrate_world.active_sessions() == []


def test_a_failing_revision_exits_nonzero_and_changes_nothing(migrate_world: TunnelWorld, postgres: Postgres,
                                                              tmp_path: Path) -> None:
    cfg = load_env("sandbox")
    migrate(cfg, revision="0002", yes=True, transport="native")
    before = (tables(postgres), postgres.superuser_sql("SELECT version_num FROM alembic_version"))
    sessions_before = set(session_states(migrate_world))
    ini = copy_migrations(tmp_path, extra={"0004_broken.py": FAILING_REVISION})
    result = run_cli(migrate_world, "migrate", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    assert result.returncode == 1
    assert "division by zero" in result.stderr
    assert "error: alembic upgrade failed on sandbox (exit status 1; its output is above)" in result.stderr
    assert "nothing of this run was applied (the database is still at 0002)" in result.stderr
    assert (tables(postgres), postgres.superuser_sql("SELECT version_num FROM alembic_version")) == before
    assert postgres.superuser_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
    new = {k: v for k, v in session_states(migrate_world).items() if k not in sessions_before}
    assert new and set(new.values()) == {"Terminated"}
    assert migrate_world.active_sessions() == []


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return out


def test_the_password_is_in_no_command_line_output_or_log(migrate_world: TunnelWorld, postgres: Postgres,
                                                          tmp_path: Path) -> None:
    ini = slow_ini(tmp_path, seconds=3)
    proc = cli(migrate_world, "migrate", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    seen_alembic = False
    scans = 0
    secret_bytes = {f.encode() for f in SECRET_FORMS}
    try:
        while proc.poll() is None:
            for pid, cmd in _cmdlines().items():
                assert not any(s in cmd for s in secret_bytes), f"password in the command line of pid {pid}"
                # Only this test's own Alembic: other workers' runs (a runbook's `migrate --sql`) hold other URLs.
                if b"alembic_launcher.py\x00run\x00-c\x00" in cmd and descends_from(pid, proc.pid):
                    try:
                        environ = Path(f"/proc/{pid}/environ").read_bytes()
                    except OSError:
                        continue
                    # Positive control: the password is in flight, in the child's environment only.
                    if b"DATABASE_URL=" in environ:
                        assert quote(PASSWORD, safe="").encode() in environ
                        seen_alembic = True
            scans += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert seen_alembic and scans > 10
    assert no_leak(out) and no_leak(err)
    for path in [*migrate_world.state_dir.rglob("*"), postgres.root / "log"]:
        if path.is_file():
            assert no_leak(path.read_text(errors="replace")), f"password in {path}"


@needs_psql
def test_psql_runs_a_query_with_the_password_in_its_environment_only(migrate_world: TunnelWorld,
                                                                     postgres: Postgres) -> None:
    migrate(load_env("sandbox"), yes=True, transport="native")
    postgres.superuser_sql("INSERT INTO users (email, name) VALUES ('a@example.com', 'Ada'), ('b@example.com', 'B')")
    result = run_cli(migrate_world, "psql", "--env", "sandbox", "--transport", "native", "-c",
                     "select name from users order by name")
    assert result.returncode == 0, result.stderr
    assert "Ada" in result.stdout and "(2 rows)" in result.stdout
    assert no_leak(result.stdout + result.stderr)
    failed = run_cli(migrate_world, "psql", "--env", "sandbox", "--transport", "native", "-c", "select 1/0")
    assert failed.returncode == 1 and "division by zero" in failed.stderr
    assert migrate_world.active_sessions() == []


@needs_psql
def test_psql_query_function_for_the_demo(migrate_world: TunnelWorld) -> None:
    from ops.psql import query

    assert "42" in query(load_env("sandbox"), "select 40 + 2 as answer", transport="native")


def test_dbeaver_takes_the_user_from_the_secret_and_never_the_password(migrate_world: TunnelWorld,
                                                                       tmp_path: Path) -> None:
    ws = tmp_path / "dbeaver-ws"
    result = run_cli(migrate_world, "dbeaver", "--env", "sandbox", "--workspace", str(ws))
    assert result.returncode == 0, result.stderr
    assert "next: invoke tunnel --env sandbox" in result.stdout
    path = ws / "General" / ".dbeaver" / "data-sources.json"
    doc = json.loads(path.read_text())
    conf = doc["connections"]["postgres-jdbc-bastionless-sandbox"]["configuration"]
    assert conf["user"] == "app_admin" and conf["port"] == "5433"
    assert no_leak(path.read_text()) and no_leak(result.stdout + result.stderr)
    again = run_cli(migrate_world, "dbeaver", "--env", "sandbox", "--workspace", str(ws))
    assert again.returncode == 0 and "already up to date" in again.stdout


@needs_psql
def test_db_url_and_a_pg_service_entry_that_libpq_uses(migrate_world: TunnelWorld, tmp_path: Path) -> None:
    migrate(load_env("sandbox"), yes=True, transport="native")
    port = free_port()
    files = {"PGSERVICEFILE": str(tmp_path / "pg_service.conf"), "PGPASSFILE": str(tmp_path / "pgpass")}
    result = run_cli(migrate_world, "db-url", "--env", "sandbox", "--port", str(port), "--pgservice", "--pgpass",
                     PGSERVICEFILE=files["PGSERVICEFILE"], PGPASSFILE=files["PGPASSFILE"])
    assert result.returncode == 0, result.stderr
    assert f"DATABASE_URL=postgresql://app_admin@127.0.0.1:{port}/app?sslmode=disable" in result.stdout
    assert no_leak(result.stdout + result.stderr)
    assert stat.S_IMODE(Path(files["PGPASSFILE"]).stat().st_mode) == 0o600
    assert no_leak(Path(files["PGSERVICEFILE"]).read_text())
    # libpq itself reads both files: psql connects with neither a password nor a host on its command line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | files
    with open_tunnel(load_env("sandbox"), local_port=port, transport="native", report=lambda _: None):
        out = subprocess.run(["psql", "service=bastionless-sandbox", "-At", "-c", "select count(*) from orders"],
                             env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_sql_mode_prints_sql_without_aws_or_a_session(migrate_world: TunnelWorld) -> None:
    before = session_states(migrate_world)
    result = run_cli(migrate_world, "migrate", "--env", "sandbox", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE users" in result.stdout and "CREATE INDEX orders_user_created_idx" in result.stdout
    assert session_states(migrate_world) == before


def test_the_account_guard_stops_before_any_session(migrate_world: TunnelWorld) -> None:
    path = migrate_world.envs_dir / "otheraccount.toml"
    path.write_text(plain_sandbox_toml().replace('"123456789012"', '"999999999999"'))
    cfg = load_env("otheraccount", migrate_world.envs_dir)
    before = session_states(migrate_world)
    with pytest.raises(AccountMismatchError, match="999999999999"):
        migrate(cfg, yes=True, transport="native")
    assert session_states(migrate_world) == before


def test_prod_without_yes_and_without_a_terminal_is_refused_before_aws(migrate_world: TunnelWorld) -> None:
    result = run_cli(migrate_world, "migrate", "--env", "prod")
    assert result.returncode == 1
    assert "needs confirmation" in result.stderr and "--yes" in result.stderr


def test_ctrl_c_stops_alembic_rolls_back_and_terminates_the_session(migrate_world: TunnelWorld, postgres: Postgres,
                                                                    tmp_path: Path) -> None:
    ini = slow_ini(tmp_path, seconds=30)
    before = set(session_states(migrate_world))
    proc = cli(migrate_world, "migrate", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    try:
        wait_for(lambda: postgres.superuser_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'") == "1",
            timeout=30, what="the slow revision to run")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert tables(postgres) == set()  # the whole run was one transaction
    assert lock_holders(postgres) == 0
    new = {k: v for k, v in session_states(migrate_world).items() if k not in before}
    assert new and set(new.values()) == {"Terminated"}
    assert migrate_world.active_sessions() == []


@needs_psql
def test_migrate_and_psql_next_to_a_background_tunnel(migrate_world: TunnelWorld) -> None:
    # The demo keeps `invoke tunnel --background` open while it migrates: ephemeral tunnels coexist.
    from ops import tunnels_state
    from ops.psql import query
    from ops.tunnel import start_background

    cfg = load_env("sandbox")
    start_background(cfg, local_port=free_port(), reason="db tests", transport="native")
    try:
        migrate(cfg, yes=True, transport="native")
        assert "0003" in query(cfg, "select version_num from alembic_version", transport="native")
    finally:
        tunnels_state.close("sandbox")
    assert migrate_world.active_sessions() == []


def test_status_of_a_database_ahead_of_the_checkout(migrate_world: TunnelWorld, postgres: Postgres,
                                                    tmp_path: Path) -> None:
    from ops.errors import OpsError

    cfg = load_env("sandbox")
    ini = copy_migrations(tmp_path, extra={"0004_new.py": revision_file("0004", "0003", "    pass")})
    migrate(cfg, yes=True, transport="native", ini=str(ini))
    with pytest.raises(OpsError) as exc:
        migration_status(cfg, transport="native")
    assert "at revision 0004" in exc.value.message and "git pull" in exc.value.next_step
    assert migration_status(cfg, transport="native", ini=str(ini)).current == ("0004",)
