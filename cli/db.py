"""Database workflows through the tunnel: Alembic migrations, DBeaver, psql, connection details."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, YES_HELP, local_port_help, ops_errors

TRANSPORT_HELP = "auto (session-manager-plugin if installed, else the built-in client), plugin, or native"
INI_HELP = ("alembic.ini to use instead of [migrations] alembic_ini of the env (relative to the current "
            "directory)")
PYTHON_HELP = ("the project's python that runs Alembic (default: [migrations] python, else the .venv next to "
               "the ini, else bastionless' own)")

# Shown by `invoke --help migrate` (invoke prints the whole docstring); the README says the same.
ENV_PY_CONTRACT = """
    How env.py gets the database. The alembic child's environment (never its argv) carries:
      DATABASE_URL   postgresql://user:password@host:port/db, no query string (any driver; swap the
                     scheme for yours: postgresql+psycopg://, postgresql+asyncpg://)
      PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE (PGSSLROOTCERT, PGHOSTADDR): libpq's own
      [migrations.env] of the env file: any other names, e.g. POSTGRES_SERVER = "{host}"
                     ({host} {port} {user} {password} {dbname} {sslmode} {sslrootcert} {url})
      [migrations] x_args = ["key={dbname}"]: alembic -x (no password placeholders: argv)
    After the run the database itself is checked through the tunnel: if env.py migrated another
    database (it ignored all of the above), the command fails and says where it connected.

    1. DATABASE_URL                      2. settings from POSTGRES_* (map them in the env file)
      url = os.environ["DATABASE_URL"]     [migrations.env]
      url = url.replace("postgresql://",   POSTGRES_SERVER = "{host}"
            "postgresql+psycopg://", 1)    POSTGRES_PORT = "{port}"
      config.set_main_option(              POSTGRES_USER = "{user}"
          "sqlalchemy.url", url)           POSTGRES_PASSWORD = "{password}"   (+ POSTGRES_DB)
    3. async (asyncpg)
      url = settings.DATABASE_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
      engine = create_async_engine(url, poolclass=pool.NullPool)
      async with engine.connect() as connection:
          await connection.run_sync(do_run_migrations)
      await engine.dispose()
"""


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@task(name="migrate", help={
    "env": ENV_HELP,
    "revision": "target revision (default: head)",
    "sql": "print the SQL instead of running it (offline: no AWS calls, no tunnel, no database)",
    "yes": YES_HELP + " (prod asks otherwise)",
    "transport": TRANSPORT_HELP,
    "reason": "why you migrate; sent as the StartSession reason (session history, CloudTrail)",
    "ini": INI_HELP,
    "python": PYTHON_HELP,
    "break_glass": "run as the master user (password from Secrets Manager: the break-glass role) instead of as "
                   "yourself through the auth proxy",
})
def migrate(c: Context, env: str = "", revision: str = "head", sql: bool = False, yes: bool = False,
            transport: str = "auto", reason: str = "", ini: str = "", python: str = "",
            break_glass: bool = False) -> None:
    with ops_errors():
        from ops.migrate import migrate as run

        done = run(_common.env(env), revision=revision, sql=sql, yes=yes, transport=transport, reason=reason,
                   ini=ini, python=python, report=_log, break_glass=break_glass)
        if done:
            print(done)


migrate.__doc__ = ("Run Alembic upgrade through an ephemeral tunnel (one runner at a time: advisory lock), "
                   "then check the database.\n" + ENV_PY_CONTRACT)


@task(name="migrate-status", help={"env": ENV_HELP, "transport": TRANSPORT_HELP, "ini": INI_HELP,
                                   "python": PYTHON_HELP})
def migrate_status(c: Context, env: str = "", transport: str = "auto", ini: str = "", python: str = "") -> None:
    """Show the current revision (read from the database through the tunnel), the history and pending revisions."""
    with ops_errors():
        from ops.migrate import migration_status

        print(migration_status(_common.env(env), transport=transport, ini=ini, python=python, report=_log).format())


@task(name="migrate-downgrade", help={
    "env": ENV_HELP,
    "revision": "target revision: an id, -1 for one step back, or base (required)",
    "sql": "print the SQL instead of running it (offline; give a range FROM:TO, e.g. 0003:0002)",
    "yes": YES_HELP + " (a downgrade always asks otherwise)",
    "transport": TRANSPORT_HELP,
    "reason": "why you downgrade; sent as the StartSession reason",
    "ini": INI_HELP,
    "python": PYTHON_HELP,
})
def migrate_downgrade(c: Context, env: str = "", revision: str = "", sql: bool = False, yes: bool = False,
                      transport: str = "auto", reason: str = "", ini: str = "", python: str = "") -> None:
    """Run Alembic downgrade to --revision through an ephemeral tunnel (asks for confirmation), then check."""
    with ops_errors():
        from ops.migrate import migrate as run

        done = run(_common.env(env), revision=revision, downgrade=True, sql=sql, yes=yes, transport=transport,
                   reason=reason, ini=ini, python=python, report=_log)
        if done:
            print(done)


@task(name="dbeaver", help={
    "env": ENV_HELP,
    "workspace": "DBeaver workspace folder (default: DBeaver's own, e.g. ~/.local/share/DBeaverData/workspace6)",
    "print": "print the connection entry instead of writing the file",
    "port": local_port_help("the tunnel's local port DBeaver connects to"),
    "start_tunnel": "register DBeaver's before-connect command: connecting in DBeaver starts the tunnel "
                    "(invoke tunnel --background)",
})
def dbeaver(c: Context, env: str = "", workspace: str = "", print_: bool = False, port: int = -1,
            start_tunnel: bool = False) -> None:
    """Add or update the env's connection in DBeaver (localhost:<tunnel port>, no password saved)."""
    with ops_errors():
        import json

        from ops import dbeaver as dbv

        cfg = _common.env(env)
        result = dbv.configure(cfg, workspace=Path(workspace).expanduser() if workspace else None, dry_run=print_,
                               port=None if port < 0 else port, start_tunnel=start_tunnel)
        print(json.dumps({result.connection_id: result.entry}, indent=2) if print_ else dbv.describe(cfg, result))


@task(name="psql", help={
    "env": ENV_HELP,
    "command": "SQL to run (psql -c); default: an interactive psql session",
    "transport": TRANSPORT_HELP,
    "reason": "why you connect; sent as the StartSession reason",
    "break_glass": "connect as the master user (password from Secrets Manager: the break-glass role) instead of "
                   "as yourself through the auth proxy",
})
def psql(c: Context, env: str = "", command: str = "", transport: str = "auto", reason: str = "",
         break_glass: bool = False) -> None:
    """psql through an ephemeral tunnel: as yourself with no password (env lists people), else the master user."""
    with ops_errors():
        from ops.psql import run_psql

        code = run_psql(_common.env(env), command=command, transport=transport, reason=reason, report=_log,
                        break_glass=break_glass).returncode
    if code:
        raise Exit(code=code)


@task(name="db-url", help={
    "env": ENV_HELP,
    "port": local_port_help("local tunnel port to describe"),
    "pgservice": "also write a [bastionless-<env>] entry to pg_service.conf ($PGSERVICEFILE or ~/.pg_service.conf)",
    "pgpass": "with --pgservice: also store the master password in .pgpass ($PGPASSFILE or ~/.pgpass, mode "
              "0600); only for envs without [[people]] (elsewhere there is no password to store)",
})
def db_url(c: Context, env: str = "", port: int = -1, pgservice: bool = False, pgpass: bool = False) -> None:
    """Print how to connect through `invoke tunnel` (never the password); optionally write pg_service.conf."""
    with ops_errors():
        from ops import dburl, identity_tunnel
        from ops import pgservice as pgs

        cfg = _common.env(env)
        at = None if port < 0 else port
        if identity_tunnel.choose_target(cfg, raw=False) == "postgres-auth":
            params, text = identity_tunnel.describe_local_end(cfg, port=at)
        else:
            params = dburl.details(cfg, port=at)
            text = dburl.describe(cfg, params)
        print(text)
        if pgservice or pgpass:
            print(pgs.configure(cfg, params, pgpass=pgpass))


JOBS_HELP = "parallel jobs, each through a Session Manager session of its own (one carries ~1 MB/s)"


@task(name="db-dump", help={
    "dir": "directory to write the dump into: new or empty; made 0700",
    "env": ENV_HELP,
    "jobs": JOBS_HELP,
    "schema_only": "dump the schema only, no data",
    "table": "dump only this table (pg_dump --table pattern); repeat for more",
    "transport": TRANSPORT_HELP,
    "reason": "why you dump; sent as the StartSession reason",
}, positional=["dir"], iterable=["table"])
def db_dump(c: Context, dir: str, env: str = "", jobs: int = 4, schema_only: bool = False,
            table: list[str] | None = None, transport: str = "auto", reason: str = "") -> None:
    """pg_dump -Fd -j N of the env's database into DIR (new, 0700) through a pool of N sessions."""
    with ops_errors():
        from ops.dbdump import dump

        print(dump(_common.env(env), Path(dir), jobs=jobs, schema_only=schema_only, tables=table or [],
                   transport=transport, reason=reason, report=_log))


@task(name="db-restore", help={
    "dir": "a directory written by invoke db-dump (pg_dump -Fd)",
    "env": ENV_HELP + " (never a production env)",
    "jobs": JOBS_HELP,
    "schema_only": "restore the schema only, no data",
    "table": "restore only this table; repeat for more",
    "transport": TRANSPORT_HELP,
    "reason": "why you restore; sent as the StartSession reason",
    "yes": YES_HELP,
}, positional=["dir"], iterable=["table"])
def db_restore(c: Context, dir: str, env: str = "", jobs: int = 4, schema_only: bool = False,
               table: list[str] | None = None, transport: str = "auto", reason: str = "", yes: bool = False) -> None:
    """pg_restore -j N of a db-dump directory into a non-production env's database (asks first)."""
    with ops_errors():
        from ops.dbdump import restore

        print(restore(_common.env(env), Path(dir), jobs=jobs, schema_only=schema_only, tables=table or [],
                      transport=transport, reason=reason, yes=yes, report=_log))
