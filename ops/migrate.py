"""Alembic migrations through an ephemeral tunnel, one runner at a time, checked against the database.

`migrate()`: account guard, confirmation where it matters, password from Secrets Manager, a tunnel
on a free port, a PostgreSQL advisory lock held by a connection of our own for the whole run, then
Alembic's command line in the *project's* interpreter (ops/alembic_launcher.py) with the connection
in its environment (never argv): DATABASE_URL, the libpq PG* variables and the env file's
[migrations.env] mapping. The child's output is passed through with the password masked.

Alembic's exit status alone proves nothing: an env.py that ignores DATABASE_URL migrates some other
database and exits 0. So after the run, the lock's own connection (the tunnel's database, whatever
env.py did) reads the version table and compares it with the heads Alembic reported (the launcher
records them, with where env.py connected). A mismatch is an error that names where it went.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import quote

from ops import aws
from ops import confirm as confirm_mod
from ops.config import PROJECT_ROOT, EnvConfig
from ops.dbtunnel import sigterm_as_interrupt, through_tunnel
from ops.dburl import ConnectionParams
from ops.errors import AbortedError, CommandFailedError, ConfigError, OpsError, ToolMissingError
from ops.fileio import atomic_write

# One key for every bastionless migration runner: pg_try_advisory_lock takes a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"bastionless:migrate").digest()[:8], "big", signed=True)
APPLICATION_NAME = "bastionless-migrate"
CHILD_STOP_TIMEOUT = 15.0
LAUNCHER = Path(__file__).resolve().parent / "alembic_launcher.py"
REPORT_ENV = "BASTIONLESS_MIGRATE_REPORT"
HOST_MAP_ENV = "BASTIONLESS_HOST_MAP"
# --sql: a host that can never resolve (RFC 2606), should an env.py connect anyway.
OFFLINE_HOST = "offline.invalid"

Confirm = Callable[[str], str]
Report = Callable[[str], None]


class MigrationLockedError(OpsError):
    """Another migration runner holds the advisory lock."""


class WrongDatabaseError(CommandFailedError):
    """Alembic reported success, but not for the tunnel's database."""


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str
    message: str
    is_head: bool


@dataclass(frozen=True)
class MigrationStatus:
    env: str
    alembic_ini: str
    current: tuple[str, ...]
    heads: tuple[str, ...]
    history: tuple[Revision, ...]   # newest first
    pending: tuple[str, ...]        # in the order they would run
    interpreter: str = ""

    def format(self) -> str:
        current = set(self.current)
        pending = set(self.pending)
        width = max((len(r.revision) for r in self.history), default=4)
        lines = [f"migrations for {self.env} ({self.alembic_ini})",
                 f"current: {', '.join(self.current) or '(empty database: no revision applied)'}"
                 f"   (read through the tunnel from the database itself)",
                 f"head:    {', '.join(self.heads)}",
                 "history (newest first, * = current):"]
        for rev in self.history:
            mark = "*" if rev.revision in current else " "
            tag = "  (current)" if rev.revision in current else "  (pending)" if rev.revision in pending else ""
            lines.append(f"  {mark} {rev.revision:<{width}}  {rev.message}{tag}")
        if self.pending:
            lines.append(f"pending: {len(self.pending)} ({', '.join(self.pending)}); "
                         f"apply with: invoke migrate --env {self.env}")
        else:
            lines.append("pending: none, the database is at head")
        if self.interpreter:
            lines.append(f"scripts read with {self.interpreter}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Project:
    """An Alembic project: its ini and where that path came from (for error messages)."""

    ini: Path
    source: str

    @property
    def shown(self) -> str:
        return _rel(self.ini)


@dataclass(frozen=True)
class Interpreter:
    path: str
    source: str
    python: str = ""
    alembic: str = ""

    def describe(self) -> str:
        return f"{self.path} (Python {self.python}, alembic {self.alembic}; {self.source})"


@dataclass
class RunReport:
    """What the launcher saw in the child (ops/alembic_launcher.py); nothing secret."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == kind), None)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def phase(self) -> str:
        done = self.last("exit")
        if done:
            return str(done.get("phase", "env"))
        return "finished" if self.last("finished") else "migrating" if self.last("migrating") else "env"

    def target(self) -> dict[str, Any] | None:
        """Where Alembic's migration context was connected (else the last connection attempt)."""
        return self.last("migrating") if (m := self.last("migrating")) and m.get("url") else self.last("connect")


def alembic_project(cfg: EnvConfig, override: str = "") -> Project:
    """--ini (relative to where the user typed it) or [migrations] alembic_ini (relative to the project)."""
    if override:
        path, source = Path(override).expanduser(), f"--ini {override}"
        path = path if path.is_absolute() else Path.cwd() / path
        fix = "pass --ini with the path of your alembic.ini (relative to the current directory)"
    else:
        raw = cfg.migrations.alembic_ini
        path, source = Path(raw).expanduser(), f"[migrations] alembic_ini in {_rel(cfg.source)}"
        path = path if path.is_absolute() else PROJECT_ROOT / path
        fix = f"set [migrations] alembic_ini in {_rel(cfg.source)} to your alembic.ini, or pass --ini"
    if not path.is_file():
        raise ConfigError(f"no Alembic project at {path} (from {source})", next_step=fix)
    return Project(ini=path.resolve(), source=source)


def alembic_ini(cfg: EnvConfig, override: str = "") -> Path:
    return alembic_project(cfg, override).ini


def project_python(cfg: EnvConfig, project: Project, override: str = "") -> Interpreter:
    """--python, else [migrations] python, else the .venv next to the project, else bastionless' own."""
    if override:
        path = Path(override).expanduser()
        return _probe(str(path if path.is_absolute() else Path.cwd() / path), f"from --python {override}")
    if cfg.migrations.python:
        path = Path(cfg.migrations.python).expanduser()
        return _probe(str(path if path.is_absolute() else PROJECT_ROOT / path),
                      f"from [migrations] python in {_rel(cfg.source)}")
    venv = find_venv(project.ini.parent)
    if venv:
        return _probe(str(venv), f"the project's {venv.parent.parent}")
    return _probe(sys.executable, "bastionless' own: the project has no .venv; set [migrations] python or --python")


def find_venv(start: Path) -> Path | None:
    """`.venv/bin/python` in the ini's folder or above, up to the repository root or the home folder."""
    home = Path.home().resolve()
    for folder in (start, *start.parents):
        candidate = folder / ".venv" / "bin" / "python"
        if candidate.exists():
            return candidate
        if (folder / ".git").exists() or folder == home:
            return None
    return None


# What the launcher's `info` said per interpreter, in the state dir: every migrate and migrate-status asked
# again (a Python start, ~0.3 s of CPU). An answer is reused only while the interpreter file, the
# variables that steer its imports and every directory on its sys.path are unchanged (installing or
# removing a package changes its site-packages directory); only answers that found alembic are kept.
PROBE_CACHE = "alembic-interpreters.json"
_PROBE_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONSAFEPATH")


def _fingerprint(path: str, dirs: Sequence[str]) -> list[Any]:
    marks: list[Any] = [[name, os.environ.get(name)] for name in _PROBE_ENV]
    for item, follow in ((path, False), (path, True), *((d, True) for d in dirs)):
        try:
            st = os.stat(item, follow_symlinks=follow)
            marks.append([item, st.st_ino, st.st_size, st.st_mtime_ns])
        except OSError:
            marks.append([item, None])
    return marks


def _probe_cache() -> dict[str, Any]:
    """The cache file's entries; {} when it is missing or unreadable (it is only a cache)."""
    try:
        known = json.loads((aws.state_dir() / PROBE_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _cached_info(path: str) -> dict[str, Any] | None:
    entry = _probe_cache().get(path)
    if not isinstance(entry, dict) or not isinstance(entry.get("info"), dict):
        return None
    info: dict[str, Any] = entry["info"]
    return info if entry.get("fingerprint") == _fingerprint(path, info.get("paths") or []) else None


def _remember_info(path: str, info: dict[str, Any]) -> None:
    known = _probe_cache()
    known[path] = {"fingerprint": _fingerprint(path, info.get("paths") or []), "info": info}
    try:
        atomic_write(aws.state_dir() / PROBE_CACHE, json.dumps(known, indent=1), mode=0o600)
    except OSError:
        pass  # a cache: the next run asks the interpreter again


def _probe(path: str, source: str) -> Interpreter:
    info = _cached_info(path)
    if info is None:
        info = _ask(path, source)
        _remember_info(path, info)
    return Interpreter(path=path, source=source, python=str(info.get("python", "")), alembic=str(info["alembic"]))


def _ask(path: str, source: str) -> dict[str, Any]:
    """The launcher's `info` from the interpreter itself; raises unless it runs and has alembic."""
    try:
        out = subprocess.run([path, str(LAUNCHER), "info"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise ToolMissingError(f"the migration interpreter {path} ({source}) did not answer within 60 s",
                               next_step="point --python or [migrations] python at the project's python") from None
    except OSError as exc:
        raise ToolMissingError(f"cannot run the migration interpreter {path} ({source}): {exc.strerror}",
                               next_step="point --python or [migrations] python at the project's python") from None
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
    except (json.JSONDecodeError, IndexError):
        info = {}
    if not info:
        raise ToolMissingError(f"the migration interpreter {path} ({source}) does not run Python 3 scripts: "
                               f"{_tail(out.stderr)}", next_step="point --python or [migrations] python at the "
                                                                 "project's python")
    if not info.get("alembic"):
        raise ToolMissingError(f"alembic is not installed for {path} ({source})",
                               next_step=f"{path} -m pip install alembic (or pass --python)")
    return dict(info)


def alembic_argv(python: str, ini: Path, *args: str, x_args: Sequence[str] = ()) -> list[str]:
    """The alembic child's command line: nothing secret ever goes here."""
    xs = [a for x in x_args for a in ("-x", x)]
    return [python, str(LAUNCHER), "run", "-c", str(ini), *xs, *args]


def connection_values(params: ConnectionParams | None, password: str) -> dict[str, str]:
    """What the placeholders of [migrations.env] / x_args stand for (params None: offline, --sql)."""
    if params is None:
        return {"host": OFFLINE_HOST, "port": "5432", "user": "offline", "password": "", "dbname": "offline",
                "sslmode": "disable", "sslrootcert": "", "url": f"postgresql://offline@{OFFLINE_HOST}:5432/offline"}
    return {"host": params.host, "port": str(params.port), "user": params.user, "password": password,
            "dbname": params.dbname, "sslmode": params.sslmode, "sslrootcert": params.sslrootcert,
            "url": params.driver_url(password=password)}


def fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"{([a-z]+)}", lambda m: values.get(m.group(1), m.group(0)), template)


def child_env(cfg: EnvConfig | None, params: ConnectionParams | None, password: str, *,
              report_path: str = "") -> dict[str, str]:
    """The alembic child's environment: the only place the password goes.

    DATABASE_URL (no query string: every driver accepts it), the libpq PG* variables (libpq, and
    asyncpg, read them: TLS mode, CA bundle, password), and the env file's own mapping."""
    # libpq fills unset parameters from PG* variables: a PGHOSTADDR or PGSERVICE left in the
    # caller's shell must not send the migration somewhere else than the tunnel.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    values = connection_values(params, password)
    env["DATABASE_URL"] = values["url"]
    if params is not None:
        env.update(params.libpq_env(password=password))
        if params.hostaddr:
            env[HOST_MAP_ENV] = f"{params.host}={params.hostaddr}"
    if cfg is not None:
        env.update({name: fill(template, values) for name, template in cfg.migrations.env})
    if report_path:
        env[REPORT_ENV] = report_path
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def confirm_action(cfg: EnvConfig, action: str, *, yes: bool, needed: bool, ask: Confirm | None = None,
                   account: str = "") -> None:
    """Type the environment name when `needed` (prod, downgrades) unless `yes` (ops.confirm: terminal only)."""
    if yes or not needed:
        return
    try:
        confirm_mod.confirm(cfg, action=f"Run {action} on", account=account or cfg.account_id, what=action, ask=ask,
                            type_name=True)
    except AbortedError as exc:
        if exc.next_step:
            raise
        raise AbortedError(f"not confirmed; {action} on {cfg.name} was not run") from None


def migrate(cfg: EnvConfig, *, revision: str = "head", downgrade: bool = False, sql: bool = False,
            yes: bool = False, ask: Confirm | None = None, transport: str = "auto", ini: str = "",
            python: str = "", reason: str = "", report: Report | None = None, break_glass: bool = False) -> str:
    """Upgrade (or downgrade) the env's database to `revision`, then check the database itself.

    Returns the one-line outcome. Raises CommandFailedError with Alembic's exit status when Alembic
    fails, WrongDatabaseError when Alembic succeeded on another database. `sql`: print the SQL only
    (offline: no AWS, no tunnel, no connection anywhere). Where the env lists people, Alembic runs as
    the caller's own DB user through the auth proxy (a URL with no password); `break_glass`: as the
    master user."""
    say = report or (lambda _: None)
    project = alembic_project(cfg, ini)
    command = "downgrade" if downgrade else "upgrade"
    if downgrade and not revision:
        raise OpsError("a downgrade needs a target revision", next_step="pass --revision -1 (one step) or an id")
    if sql and downgrade and ":" not in revision:
        # Offline, Alembic cannot read the current revision from the database: it needs both ends.
        raise OpsError(f"--sql for a downgrade needs a range FROM:TO, not {revision!r}",
                       next_step=f"invoke migrate-downgrade --env {cfg.name} --sql --revision 0003:0002")
    interp = project_python(cfg, project, python)
    say(f"alembic runs with {interp.describe()}")
    x_args = cfg.migrations.x_args
    if sql:
        with _report_file() as path:
            code = run_alembic(project.ini, [command, revision, "--sql"], python=interp.path,
                               env=child_env(cfg, None, "", report_path=str(path)),
                               x_args=[fill(x, connection_values(None, "")) for x in x_args])
            run = read_report(path)
        if attempt := run.last("offline_connect"):
            raise CommandFailedError(
                f"your env.py connects to a database even in offline (--sql) mode: it tried {attempt['url']}; "
                f"bastionless refused the connection, so no SQL was printed from it",
                returncode=code or 1, next_step="in env.py's run_migrations_offline, call context.configure(url=...) "
                                                "without creating an engine (see invoke --help migrate)")
        _check(code, command, cfg, project, run, before=None, after=None)
        return ""  # stdout is the SQL alone (`--sql > upgrade.sql`)
    needed = cfg.is_prod or downgrade
    if needed and not yes and ask is None:
        # Nobody could answer: refuse before touching AWS.
        confirm_mod.require_terminal(f"alembic {command} {revision} on {cfg.name}")
    # A changing command checks the AWS account before it asks (and before it opens anything).
    account = aws.check_account(cfg)["Account"]
    confirm_action(cfg, f"alembic {command} {revision}", yes=yes, needed=needed, ask=ask, account=account)
    with _database(cfg, reason=reason or f"bastionless migrate: alembic {command} {revision}", transport=transport,
                   report=report, break_glass=break_glass, what=f"alembic {command}") as (params, password):
        values = connection_values(params, password)
        with migration_lock(params, password, env=cfg.name) as lock, _report_file() as path:
            table = cfg.migrations.version_table
            before = database_heads(lock, table)
            code = run_alembic(project.ini, [command, revision], python=interp.path,
                               env=child_env(cfg, params, password, report_path=str(path)),
                               x_args=[fill(x, values) for x in x_args], secrets=(password,))
            run = read_report(path)
            used = run.last("migrating")
            if used and used.get("version_table"):
                schema = used.get("version_table_schema")
                table = f"{schema}.{used['version_table']}" if schema else str(used["version_table"])
            after = database_heads(lock, table)
    _check(code, command, cfg, project, run, before=before, after=after, params=params)
    done = f"migrated to {revision}" if command == "upgrade" else f"downgrade to {revision} done"
    return f"{cfg.name}: {done}; the database is at {_fmt(after)} (checked through the tunnel)"


def migration_status(cfg: EnvConfig, *, transport: str = "auto", ini: str = "", python: str = "",
                     report: Report | None = None) -> MigrationStatus:
    """Current revision read from the database through the tunnel (never through env.py), history
    and pending revisions from the scripts (read with the project's interpreter)."""
    project = alembic_project(cfg, ini)
    interp = project_python(cfg, project, python)
    history, heads = script_history(project, interp)
    known = {r.revision for r in history}
    with _database(cfg, reason="bastionless migrate-status", transport=transport, report=report,
                   break_glass=False, what="migrate-status") as (params, password):
        with _connect(params, password, env=cfg.name) as db:
            current = database_heads(db, cfg.migrations.version_table)
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        raise OpsError(f"the {cfg.name} database is at revision {', '.join(unknown)}, which {project.shown} "
                       f"(from {project.source}) does not have (a newer deploy, or another branch)",
                       next_step="update your checkout (git pull) and rerun; never downgrade from an old checkout")
    pending = _pending(history, heads, current)
    return MigrationStatus(env=cfg.name, alembic_ini=project.shown, current=current, heads=heads, history=history,
                           pending=pending, interpreter=interp.describe())


@contextmanager
def _database(cfg: EnvConfig, *, reason: str, transport: str, report: Report | None, break_glass: bool,
              what: str) -> Iterator[tuple[ConnectionParams, str]]:
    """The env's database through an ephemeral tunnel: (params, password). Where the env lists people,
    through the auth proxy as the caller (no password); otherwise, or with `break_glass`, as the master
    user with the password from Secrets Manager."""
    from ops.identity_tunnel import break_glass_notice, choose_target, open_auth_tunnel, proxy_params

    if choose_target(cfg, raw=break_glass) == "postgres-auth":
        with sigterm_as_interrupt(), open_auth_tunnel(cfg, reason=reason, transport=transport,
                                                      report=report) as info:
            yield proxy_params(info), ""
        return
    if break_glass:
        (report or print)(break_glass_notice(cfg, what))
    with through_tunnel(cfg, reason=reason, transport=transport, report=report, break_glass=break_glass) as conn:
        yield conn.params, conn.credentials.password


def script_history(project: Project, interp: Interpreter) -> tuple[tuple[Revision, ...], tuple[str, ...]]:
    """The revision graph, read by the project's interpreter from the ini's folder (where a relative
    script_location points, as when the project runs `alembic` itself)."""
    try:
        out = subprocess.run([interp.path, str(LAUNCHER), "script", "-c", str(project.ini)],
                             cwd=project.ini.parent, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL, check=False,
                             env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    except subprocess.TimeoutExpired:
        raise OpsError(f"reading the revisions of {project.shown} with {interp.path} took over 120 s",
                       next_step="check that the revision files import quickly (no work at import time)") from None
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (json.JSONDecodeError, IndexError):
        data = None
    if not isinstance(data, dict):
        raise OpsError(f"cannot read the revisions of {project.shown} (from {project.source}) with "
                       f"{interp.path}: {_tail(out.stderr)}",
                       next_step="check script_location in the ini (relative to the ini's folder) and that the "
                                 "revision files import with that interpreter")
    history = tuple(Revision(revision=r["revision"], down_revision=r["down_revision"], message=r["message"],
                             is_head=r["is_head"]) for r in data["revisions"])
    return history, tuple(data["heads"])


def _pending(history: Sequence[Revision], heads: Sequence[str], current: Sequence[str]) -> tuple[str, ...]:
    """Revisions not yet applied, oldest first: everything an ancestor of a head but not of current."""
    parents = {r.revision: [d for d in r.down_revision.split(",") if d] for r in history}

    def ancestry(start: Sequence[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            rev = todo.pop()
            if rev not in seen:
                seen.add(rev)
                todo.extend(parents.get(rev, []))
        return seen

    applied = ancestry(current)
    wanted = ancestry(heads) - applied
    return tuple(r.revision for r in reversed(history) if r.revision in wanted)


def database_heads(conn: Any, table: str = "alembic_version") -> tuple[str, ...]:
    """The revisions in the version table, read on `conn` (ours, through the tunnel); () if none."""
    from psycopg import sql

    parts = table.split(".")
    found = conn.execute("SELECT to_regclass(%s)", (".".join(f'"{p}"' for p in parts),)).fetchone()
    if not found or found[0] is None:
        return ()
    rows = conn.execute(sql.SQL("SELECT version_num FROM {} ORDER BY 1").format(sql.Identifier(*parts))).fetchall()
    return tuple(str(r[0]) for r in rows)


@contextmanager
def _connect(params: ConnectionParams, password: str, *, env: str) -> Iterator[Any]:
    import psycopg

    try:
        conn = psycopg.connect(params.conninfo(), password=password, application_name=APPLICATION_NAME,
                               connect_timeout=15, autocommit=True)
    except psycopg.Error as exc:
        raise OpsError(f"cannot connect to the {env} database through the tunnel: {_first_line(exc, password)}",
                       next_step=f"invoke doctor --env {env}") from None
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def migration_lock(params: ConnectionParams, password: str, *, env: str) -> Iterator[Any]:
    """Hold the migration advisory lock on a connection of our own for the `with` block; yields that
    connection (autocommit: it sees what the migration committed, through the tunnel).

    pg_try_advisory_lock never waits: a second runner fails at once and is told who holds it. The
    lock is session-level, so it is gone the moment this connection ends (even if we crash)."""
    import psycopg

    with _connect(params, password, env=env) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not row or not row[0]:
            holder = conn.execute(
                "SELECT a.pid, coalesce(a.usename, ''), coalesce(a.client_addr::text, 'local'), "
                "date_trunc('second', now() - a.backend_start)::text "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s "
                "LIMIT 1", (LOCK_KEY,)).fetchone()
            who = (f" (held by backend pid {holder[0]}, user {holder[1]}, from {holder[2]}, for {holder[3]})"
                   if holder else "")
            raise MigrationLockedError(
                f"another migration is running on {env}{who}; nothing was run",
                next_step="wait for it to finish, then rerun (the lock is released when that run ends)")
        try:
            yield conn
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.Error:
                pass  # the connection is gone, and the lock with it


@contextmanager
def _report_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bastionless-migrate-") as tmp:
        path = Path(tmp) / "report.jsonl"
        path.touch(mode=0o600)
        yield path


def read_report(path: Path) -> RunReport:
    run = RunReport()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                run.events.append(event)
    return run


def run_alembic(ini: Path, args: Sequence[str], *, env: dict[str, str], python: str = sys.executable,
                x_args: Sequence[str] = (), secrets: Sequence[str] = (),
                stdout: TextIO | None = None, stderr: TextIO | None = None,
                stdout_lines: list[str] | None = None, stderr_lines: list[str] | None = None) -> int:
    """Run Alembic's command line (through the launcher) in the ini's folder; return its exit status.

    Output is relayed line by line with every form of the secrets masked. On Ctrl-C the child gets
    SIGINT (then SIGTERM/SIGKILL if it lingers) and KeyboardInterrupt propagates to close the tunnel."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    masks = _masks(secrets)
    proc = subprocess.Popen(alembic_argv(python, ini, *args, x_args=x_args), env=env, cwd=ini.parent,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, masks, stdout_lines), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, err, masks, stderr_lines), daemon=True)]
    for t in pumps:
        t.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _stop_child(proc)
        raise
    finally:
        for t in pumps:
            t.join(5)
    return code


def _pump(src: IO[str], dst: TextIO, masks: Sequence[str], lines: list[str] | None) -> None:
    writable = True
    for line in src:
        for secret in masks:
            line = line.replace(secret, "***")
        if lines is not None:
            lines.append(line.rstrip("\n"))
        if writable:
            try:
                dst.write(line)
                dst.flush()
            except (BrokenPipeError, ValueError):
                # `invoke migrate --sql | head`: keep draining so the child never blocks on a full pipe.
                writable = False


def _masks(secrets: Sequence[str]) -> list[str]:
    forms = {f for s in secrets if s for f in (s, quote(s, safe=""), quote(s))}
    return sorted(forms, key=len, reverse=True)


def _stop_child(proc: subprocess.Popen[Any]) -> None:
    for sig, wait in ((signal.SIGINT, CHILD_STOP_TIMEOUT), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _check(code: int, command: str, cfg: EnvConfig, project: Project, run: RunReport, *,
           before: tuple[str, ...] | None, after: tuple[str, ...] | None,
           params: ConnectionParams | None = None) -> None:
    """Judge the run by the database, not by the exit status alone; say only what is true."""
    db = f"{cfg.name}'s database"
    target = run.target()
    went = target.get("url", "?") if target else ""
    elsewhere = target is not None and params is not None and not _is_tunnel(target, params)
    fix = (f"make env.py read DATABASE_URL (or the PG* variables), or map the variables it reads in "
           f"[migrations.env] of {_rel(cfg.source)}; see: invoke --help migrate")
    if code == 0:
        if after is None:
            return
        finished = run.last("finished")
        if finished is None:
            raise WrongDatabaseError(f"alembic {command} exited 0 but its env.py never ran migrations "
                                     f"(no context.run_migrations); {db} through the tunnel is at {_fmt(after)}",
                                     returncode=1, next_step=fix)
        reported = tuple(sorted(finished.get("heads", [])))
        if reported != tuple(sorted(after)) or elsewhere:
            still = "still at" if after == before else "at"
            raise WrongDatabaseError(
                f"Alembic reported {_fmt(reported)} but {db} through the tunnel is {still} {_fmt(after)}: your "
                f"env.py does not use DATABASE_URL (it connected to {went or 'an unknown database'})",
                returncode=1, next_step=fix)
        return
    head = f"alembic {command} failed on {cfg.name} (exit status {code}; its output is above)"
    if after is None:  # --sql
        raise CommandFailedError(head, returncode=code, next_step=f"check {project.shown} and its env.py")
    if not run.last("env_py"):
        raise CommandFailedError(f"{head}: Alembic stopped before running env.py (the ini, its script_location or "
                                 f"the revision given); nothing was applied", returncode=code,
                                 next_step=f"check {project.shown} (from {project.source}); a relative "
                                           f"script_location is relative to the ini's folder")
    if run.phase == "env" and not run.last("connect"):
        raise CommandFailedError(f"{head}: env.py (or the settings/models it imports) failed before connecting "
                                 f"to any database; nothing was applied", returncode=code,
                                 next_step=f"fix env.py or its settings (not a revision); the SQL-only dry run "
                                           f"shows it too: invoke migrate --env {cfg.name} --sql")
    if elsewhere:
        raise CommandFailedError(f"{head}: env.py connected to {went}, not to the tunnel; {db} is untouched "
                                 f"(still at {_fmt(after)})", returncode=code, next_step=fix)
    if run.phase == "env":
        raise CommandFailedError(f"{head}: env.py could not connect to {went or 'the database'}; nothing was "
                                 f"applied", returncode=code, next_step=f"invoke doctor --env {cfg.name}")
    if after == before:
        raise CommandFailedError(f"{head}; nothing of this run was applied (the database is still at "
                                 f"{_fmt(after)})", returncode=code,
                                 next_step=f"fix the failing revision, then: invoke migrate --env {cfg.name}")
    landed = _landed(run, after)
    raise CommandFailedError(f"{head}; part of it was applied (one transaction per revision): "
                             f"{', '.join(landed) or 'some revisions'} landed and the database is now at "
                             f"{_fmt(after)}", returncode=code,
                             next_step=f"fix the next revision, then: invoke migrate --env {cfg.name} "
                                       f"(invoke migrate-status --env {cfg.name} shows where it stands)")


def _landed(run: RunReport, after: tuple[str, ...]) -> list[str]:
    """The steps the launcher saw, up to the one that left the database where it is now."""
    steps = run.all("step")
    landed: list[str] = []
    for step in steps:
        landed.extend(step.get("up" if step.get("upgrade") else "down", []))
        if tuple(sorted(step.get("heads", []))) == tuple(sorted(after)):
            return landed
    return []


def _is_tunnel(target: dict[str, Any], params: ConnectionParams) -> bool:
    """Did env.py connect to the tunnel? A missing host/port/database means libpq's PG* variables."""
    if target.get("dialect") not in ("postgresql", "postgres"):
        return False
    host, port, database = target.get("host"), target.get("port"), target.get("database")
    hosts = {params.host, params.hostaddr} - {""}
    if "127.0.0.1" in hosts:
        hosts.add("localhost")
    return ((host is None or host in hosts) and (port is None or int(port) == params.port)
            and (database is None or database == params.dbname))


def _fmt(heads: Sequence[str] | None) -> str:
    return ", ".join(heads) if heads else "no revision (empty)"


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def _first_line(exc: BaseException, secret: str) -> str:
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
    for mask in _masks((secret,)):
        text = text.replace(mask, "***")
    return text


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
