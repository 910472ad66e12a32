"""The local auth proxy against the sandbox's RDS front and a real PostgreSQL: no password anywhere on the
client side, current_user is the caller, tokens are checked like RDS checks them, failures say the fix."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ops import dblogins, pgwire, rdsauth
from tests.identity_support import DB, MASTER, PEOPLE, RDS_HOST, REGION, Bed, start_bed
from tests.tiers import needs_tool

pytestmark = pytest.mark.slow
needs_psql = needs_tool("psql", "the psql client is not installed")
EMPTY_PASSFILE = "/nonexistent/bastionless-no-pgpass"


def _no_pg_env() -> dict[str, str]:
    """No PGPASSWORD, no password file: the only way in is the proxy's token (-w: never prompt)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = EMPTY_PASSFILE
    return env


@pytest.fixture(scope="module")
def proxy_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    bed = start_bed(tmp_path_factory.mktemp("identity"))
    yield bed
    bed.close()


def who_am_i(port: int, *, host: str = "127.0.0.1", user: str = "whoever") -> tuple[str, str, str]:
    # No password argument, and an empty password file: the only way in is the proxy's token.
    with psycopg.connect(host=host, port=port, dbname=DB, user=user, passfile=EMPTY_PASSFILE,
                         application_name="pytest", connect_timeout=10) as conn:
        row = conn.execute("select current_user, session_user, current_setting('application_name')").fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), str(row[2])


def test_no_password_and_current_user_is_the_caller(proxy_bed: Bed) -> None:
    _, port = proxy_bed.proxy("alice")
    assert who_am_i(port) == ("alice", "alice", "pytest (bastionless: alice@example.com)")


def test_a_second_identity_gets_its_own_user(proxy_bed: Bed) -> None:
    _, alice = proxy_bed.proxy("alice")
    _, bob = proxy_bed.proxy("bob")
    assert who_am_i(bob)[0] == "bob"
    assert who_am_i(alice)[0] == "alice"


def test_alice_cannot_be_bob(proxy_bed: Bed) -> None:
    reports: list[str] = []
    _, port = proxy_bed.proxy("alice", db_user="bob", reports=reports)
    with pytest.raises(psycopg.OperationalError, match="RDS refused the IAM token for DB user 'bob'"):
        who_am_i(port)
    assert any("not allowed rds-db:connect as 'bob'" in line for line in proxy_bed.front_log)
    assert reports and reports[-1].startswith("error: RDS refused the IAM token") and "next: " in reports[-1]


def test_a_removed_person_is_refused_with_the_fix(proxy_bed: Bed) -> None:
    reports: list[str] = []
    _, port = proxy_bed.proxy("carol", reports=reports)
    with pytest.raises(psycopg.OperationalError) as caught:
        who_am_i(port)
    assert "may not log in" in str(caught.value)
    assert "invoke db-access --env sandbox" in str(caught.value)
    assert "invoke db-access --env sandbox" in reports[-1]


def test_a_role_without_rds_iam_is_told_so(proxy_bed: Bed) -> None:
    _, port = proxy_bed.proxy("dave")
    with pytest.raises(psycopg.OperationalError, match="not set up for IAM database authentication"):
        who_am_i(port)


def test_forged_and_expired_tokens_are_refused_by_the_front(proxy_bed: Bed) -> None:
    real = rdsauth.token_source(PEOPLE["alice"].session(), region=REGION)

    def forged(host: str, port: int, user: str) -> str:
        token = real(host, port, user)
        return token[:-6] + ("abcdef" if not token.endswith("abcdef") else "012345")

    _, port = proxy_bed.proxy("alice", token=forged)
    with pytest.raises(psycopg.OperationalError, match="RDS refused the IAM token"):
        who_am_i(port)
    assert "signature does not match" in proxy_bed.front_log[-1]

    # A token signed 16 minutes ago: botocore signs with the current time, so turn its clock back.
    def expired(host: str, port: int, user: str) -> str:
        from unittest import mock

        import botocore.auth

        past = datetime.now(UTC) - timedelta(minutes=16)
        with mock.patch.object(botocore.auth.datetime, "datetime", wraps=botocore.auth.datetime.datetime) as clock:
            clock.utcnow.return_value = past.replace(tzinfo=None)
            clock.now.return_value = past
            return real(host, port, user)

    _, port = proxy_bed.proxy("alice", token=expired)
    with pytest.raises(psycopg.OperationalError, match="RDS refused the IAM token"):
        who_am_i(port)
    assert "expired" in proxy_bed.front_log[-1]


def test_the_master_password_still_works_directly_at_the_front_for_break_glass(proxy_bed: Bed) -> None:
    with psycopg.connect(host=RDS_HOST, hostaddr="127.0.0.1", port=proxy_bed.front_port, dbname=DB, user=MASTER,
                         password=proxy_bed.master_password, sslmode="verify-full", sslrootcert=str(proxy_bed.certs.ca),
                         connect_timeout=10) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row == (MASTER,)


def test_the_front_demands_tls_and_its_certificate_names_the_rds_host(proxy_bed: Bed) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host="127.0.0.1", port=proxy_bed.front_port, dbname=DB, user=MASTER, password="x",
                        sslmode="disable", connect_timeout=10)
    # verify-full against the name we dialled (localhost) must fail: the certificate is for the RDS name.
    with pytest.raises(psycopg.OperationalError, match=r"does not match|certificate"):
        psycopg.connect(host="localhost", port=proxy_bed.front_port, dbname=DB, user=MASTER, password="x",
                        sslmode="verify-full", sslrootcert=str(proxy_bed.certs.ca), connect_timeout=10)


@needs_psql
def test_ctrl_c_in_psql_cancels_the_query_through_the_proxy(proxy_bed: Bed) -> None:
    # psql in its own process: libpq's cancel call blocks holding the GIL, so an in-process client
    # would stall the proxy's event loop, which a real user's tunnel (another process) never shares.
    _, port = proxy_bed.proxy("alice")
    proc = subprocess.Popen(["psql", "-h", "127.0.0.1", "-p", str(port), "-d", DB, "-w", "-c",
                             "select pg_sleep(60) /* cancel-me */"], env=_no_pg_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        query = ("select count(*) from pg_stat_activity where state = 'active' and query like '%cancel-me%' "
                 "and pid <> pg_backend_pid()")
        while proxy_bed.superuser_sql(query) != [(1,)]:
            assert proc.poll() is None and time.monotonic() < deadline, "the query never started"
            time.sleep(0.05)
        begin = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "canceling statement due to user request" in err
    assert time.monotonic() - begin < 10


def test_other_os_users_are_refused(proxy_bed: Bed) -> None:
    reports: list[str] = []
    _, port = proxy_bed.proxy("alice", allowed_uid=os.getuid() + 1, reports=reports)
    with pytest.raises(psycopg.OperationalError):
        who_am_i(port)
    assert f"refused a local connection from uid {os.getuid()}" in reports[-1]


def test_unix_socket_directory_is_private_and_works(proxy_bed: Bed, tmp_path: Path) -> None:
    proxy, _ = proxy_bed.proxy("bob")
    sockets = tmp_path / "sock"
    server = proxy_bed.loop.run(proxy.serve_unix(sockets, 5433))
    proxy_bed.servers.append(server)
    assert (sockets.stat().st_mode & 0o777) == 0o700
    assert who_am_i(5433, host=str(sockets))[0] == "bob"


def test_asyncpg_connects_with_a_url_without_password_or_tls(proxy_bed: Bed) -> None:
    import asyncpg
    _, port = proxy_bed.proxy("bob")

    async def go() -> str:
        conn = await asyncpg.connect(f"postgresql://bob@127.0.0.1:{port}/{DB}")
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    assert asyncio.run(go()) == "bob"


@needs_psql
def test_psql_with_no_password_anywhere(proxy_bed: Bed) -> None:
    _, port = proxy_bed.proxy("alice")
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-d", DB, "-w", "-Atc", "select current_user"],
                         env=_no_pg_env(), capture_output=True, text=True, timeout=30, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, "alice"), out.stderr


def test_the_postgresql_log_names_each_person(proxy_bed: Bed) -> None:
    _, port = proxy_bed.proxy("bob")
    who_am_i(port)
    _, carol = proxy_bed.proxy("carol")
    with pytest.raises(psycopg.OperationalError):
        who_am_i(carol)
    lines = (proxy_bed.cluster.root / "log").read_text(errors="replace").splitlines()
    found = dblogins.parse(lines, people={"bob": "bob@example.com"})
    assert any(e.person == "bob@example.com" and e.db_user == "bob" and not e.refused for e in found)
    assert any(e.db_user == "carol" and "not permitted to log in" in e.refused for e in found)


def test_garbage_at_the_proxy_gets_an_error_response(proxy_bed: Bed) -> None:
    _, port = proxy_bed.proxy("alice")

    async def go() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x00\x00\x10garbage-garbage!")
        await writer.drain()
        data = await reader.read(1000)
        writer.close()
        return data

    data = asyncio.run(go())
    reader = pgwire.Reader()
    reader.feed(data)
    msg = reader.next_message()
    assert msg is not None and pgwire.decode_error(msg).code == pgwire.PROTOCOL_VIOLATION


ASYNC_AWARE_ENV_PY = '''
import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy import create_engine

url = make_url(os.environ["DATABASE_URL"])


def run(connection):
    context.configure(connection=connection, target_metadata=None, transactional_ddl=True,
                      version_table=context.config.get_main_option("version_table"))
    with context.begin_transaction():
        context.run_migrations()


async def run_async():
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


if url.drivername.endswith("asyncpg"):
    asyncio.run(run_async())
else:
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:
        run(connection)
        connection.commit()
'''
REVISION = '''
from alembic import op
revision = "{rev}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("create table {table} (who text default current_user)")
    op.execute("insert into {table} default values")


def downgrade():
    pass
'''


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_alembic_through_the_proxy_with_a_passwordless_url(proxy_bed: Bed, tmp_path: Path, driver: str) -> None:
    """What `invoke migrate` hands Alembic: postgresql+<driver>://<user>@127.0.0.1:<port>/<db>, nothing else."""
    proxy_bed.superuser_sql("grant create on schema public to alice")
    _, port = proxy_bed.proxy("alice")
    project = tmp_path / "alembic"
    (project / "versions").mkdir(parents=True)
    (project / "env.py").write_text(ASYNC_AWARE_ENV_PY)
    table = f"made_by_{driver}"
    (project / "versions" / "0001_first.py").write_text(REVISION.format(rev=f"r{driver}", table=table))
    (tmp_path / "alembic.ini").write_text(f"[alembic]\nscript_location = {project}\n"
                                          f"version_table = alembic_version_{driver}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["DATABASE_URL"] = f"postgresql+{driver}://alice@127.0.0.1:{port}/{DB}"
    out = subprocess.run([sys.executable, "-m", "alembic", "-c", str(tmp_path / "alembic.ini"), "upgrade", "head"],
                         env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    query = f"select who, pg_get_userbyid(relowner) from {table}, pg_class where relname = '{table}'"  # noqa: S608
    assert proxy_bed.superuser_sql(query) == [("alice", "alice")]
