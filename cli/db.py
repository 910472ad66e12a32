"""Database workflows through the tunnel: Alembic migrations, DBeaver, psql, connection details."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, YES_HELP, ops_errors

TRANSPORT_HELP = "auto (session-manager-plugin if installed, else the built-in client), plugin, or native"
INI_HELP = "alembic.ini to use instead of [migrations] alembic_ini of the env"


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
    "break_glass": "run as the master user (password from Secrets Manager: the break-glass role) instead of as "
                   "yourself through the auth proxy",
})
def migrate(c: Context, env: str = "", revision: str = "head", sql: bool = False, yes: bool = False,
            transport: str = "auto", reason: str = "", ini: str = "", break_glass: bool = False) -> None:
    """Run Alembic upgrade through an ephemeral tunnel (one runner at a time: advisory lock)."""
    with ops_errors():
        from ops.migrate import migrate as run

        cfg = _common.env(env)
        run(cfg, revision=revision, sql=sql, yes=yes, transport=transport, reason=reason, ini=ini, report=_log,
            break_glass=break_glass)
        if not sql:
            print(f"{cfg.name}: migrated to {revision}")


@task(name="migrate-status", help={"env": ENV_HELP, "transport": TRANSPORT_HELP, "ini": INI_HELP})
def migrate_status(c: Context, env: str = "", transport: str = "auto", ini: str = "") -> None:
    """Show the current revision, the history with the current one marked, and pending revisions."""
    with ops_errors():
        from ops.migrate import migration_status

        print(migration_status(_common.env(env), transport=transport, ini=ini, report=_log).format())


@task(name="migrate-downgrade", help={
    "env": ENV_HELP,
    "revision": "target revision: an id, -1 for one step back, or base (required)",
    "sql": "print the SQL instead of running it (offline; give a range FROM:TO, e.g. 0003:0002)",
    "yes": YES_HELP + " (a downgrade always asks otherwise)",
    "transport": TRANSPORT_HELP,
    "reason": "why you downgrade; sent as the StartSession reason",
    "ini": INI_HELP,
})
def migrate_downgrade(c: Context, env: str = "", revision: str = "", sql: bool = False, yes: bool = False,
                      transport: str = "auto", reason: str = "", ini: str = "") -> None:
    """Run Alembic downgrade to --revision through an ephemeral tunnel (asks for confirmation)."""
    with ops_errors():
        from ops.migrate import migrate as run

        cfg = _common.env(env)
        run(cfg, revision=revision, downgrade=True, sql=sql, yes=yes, transport=transport, reason=reason, ini=ini,
            report=_log)
        if not sql:
            print(f"{cfg.name}: downgrade to {revision} done")


@task(name="dbeaver", help={
    "env": ENV_HELP,
    "workspace": "DBeaver workspace folder (default: DBeaver's own, e.g. ~/.local/share/DBeaverData/workspace6)",
    "print": "print the connection entry instead of writing the file",
})
def dbeaver(c: Context, env: str = "", workspace: str = "", print_: bool = False) -> None:
    """Add or update the env's connection in DBeaver (localhost:<tunnel port>, no password saved)."""
    with ops_errors():
        import json

        from ops import dbeaver as dbv

        cfg = _common.env(env)
        result = dbv.configure(cfg, workspace=Path(workspace).expanduser() if workspace else None, dry_run=print_)
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
    "port": "local tunnel port to describe (default: [tunnel] local_port of the env)",
    "pgservice": "also write a [bastionless-<env>] entry to pg_service.conf ($PGSERVICEFILE or ~/.pg_service.conf)",
    "pgpass": "with --pgservice: also store the password in .pgpass ($PGPASSFILE or ~/.pgpass, mode 0600)",
})
def db_url(c: Context, env: str = "", port: int = -1, pgservice: bool = False, pgpass: bool = False) -> None:
    """Print how to connect through `invoke tunnel` (never the password); optionally write pg_service.conf."""
    with ops_errors():
        from ops import dburl
        from ops import pgservice as pgs

        cfg = _common.env(env)
        params = dburl.details(cfg, port=None if port < 0 else port)
        print(dburl.describe(cfg, params))
        if pgservice or pgpass:
            print(pgs.configure(cfg, params, pgpass=pgpass))
