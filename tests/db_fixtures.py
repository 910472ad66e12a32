"""Fixtures for the database workflow tests: a real PostgreSQL that, like RDS, takes only password
(SCRAM) logins over TCP; moto for Secrets Manager/RDS; the tunnel sandbox (tests.tunnel_fixtures)
with that PostgreSQL behind the emulated relay and the RDS-managed secret holding its password.

Load with `pytest_plugins = ["tests.db_fixtures"]`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.config import EnvConfig
from ops.dburl import ConnectionParams
from tests.conftest import PROJECT_ROOT
from tests.pg_support import Cluster, start_cluster
from tests.tiers import require_tool

DB_USER = "app_admin"
DB_NAME = "app"
# Every character that needs escaping somewhere (URL, libpq conninfo, .pgpass, shell), and a
# unique part so a search of /proc or of output cannot match anything else by accident.
PASSWORD = f"pw-{uuid.uuid4().hex[:12]} :@/#?%&=+'\"\\x"


@dataclass
class Postgres:
    port: int
    root: Path
    prefix: list[str]
    cluster: Cluster

    def params(self, *, user: str = DB_USER, dbname: str = DB_NAME) -> ConnectionParams:
        return ConnectionParams(host="127.0.0.1", hostaddr="", port=self.port, dbname=dbname, user=user,
                                sslmode="disable")

    def superuser_sql(self, sql: str, *, dbname: str = DB_NAME) -> str:
        """Run SQL as the bootstrap superuser over the private Unix socket (no password); rows as
        `psql -At` prints them (columns joined by |, one row per line)."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname=dbname,
                             autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            rows = cur.fetchall() if cur.description else []
        return "\n".join("|".join("" if v is None else str(v) for v in row) for row in rows)


@pytest.fixture(scope="session")
def psql_bin() -> str:
    return require_tool(shutil.which("psql"), "the psql client is not installed (Debian: postgresql-client)")


needs_psql = pytest.mark.usefixtures("psql_bin")


def start_postgres(prefix: str = "db-pg-", *, password: str = PASSWORD) -> Postgres:
    cluster = start_cluster(prefix, superuser="postgres", auth=["--auth-local=trust", "--auth-host=scram-sha-256"])
    pg = Postgres(port=cluster.port, root=cluster.root, prefix=cluster.prefix, cluster=cluster)
    # The password reaches the server as a SCRAM verifier computed here, never as plaintext.
    import psycopg

    with psycopg.connect(host=str(cluster.root), port=cluster.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), DB_USER.encode(), b"scram-sha-256").decode()
        conn.execute(f"CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{verifier}'")
        conn.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
    return pg


def stop_postgres(pg: Postgres) -> None:
    pg.cluster.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A fresh password-only PostgreSQL per test module."""
    pg = start_postgres()
    try:
        yield pg
    finally:
        stop_postgres(pg)


def reset_schema(pg: Postgres) -> None:
    pg.superuser_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION app_admin;")


def tables(pg: Postgres) -> set[str]:
    out = pg.superuser_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return set(out.split()) if out else set()


def copy_migrations(dest: Path, *, extra: dict[str, str] | None = None) -> Path:
    """A copy of the shipped migrations/ with extra revision files; returns its alembic.ini."""
    target = dest / "migrations"
    shutil.copytree(PROJECT_ROOT / "migrations", target, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in (extra or {}).items():
        (target / "versions" / name).write_text(text)
    return target / "alembic.ini"


def revision_file(rev: str, down: str, body: str, doc: str = "test revision") -> str:
    return (f'"""{doc}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\nrevision = {rev!r}\n'
            f"down_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
            f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n")


FAILING_REVISION = revision_file("0004", "0003", (
    "    op.create_table('audit', sa.Column('id', sa.Integer, primary_key=True))\n"
    "    op.add_column('users', sa.Column('nickname', sa.Text))\n"
    "    op.execute('SELECT 1 / 0')"), doc="a revision that fails half-way")

SLOW_REVISION = revision_file("0004", "0003", (
    "    op.create_table('slow', sa.Column('id', sa.Integer, primary_key=True))\n"
    "    op.execute('SELECT pg_sleep(3)')"), doc="a revision that takes a while")


def set_database_secret(world: object, cfg: EnvConfig, *, username: str = DB_USER, password: str = PASSWORD) -> str:
    """Make the RDS-managed secret hold the real credentials (RDS keeps username = master user)."""
    rds = world.client("rds", cfg.region)  # type: ignore[attr-defined]
    arn = rds.describe_db_instances(DBInstanceIdentifier=cfg.stack_name)["DBInstances"][0]["MasterUserSecret"][
        "SecretArn"]
    world.client("secretsmanager", cfg.region).put_secret_value(  # type: ignore[attr-defined]
        SecretId=arn, SecretString=json.dumps({"username": username, "password": password}))
    return str(arn)


@pytest.fixture(scope="module")
def db_world(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres,
             moto_server_process: str) -> Iterator[object]:
    """moto + the local Session Manager endpoint + the password-only PostgreSQL behind the relay,
    env `sandbox` (so CLI subprocesses load the same envs/sandbox.toml) with its secret set."""
    from tests.tunnel_fixtures import _world

    with contextmanager(_world)(tmp_path_factory.mktemp("db-world"), postgres.port, moto_server_process) as world:
        set_database_secret(world, world.add_env("sandbox"))
        yield world
