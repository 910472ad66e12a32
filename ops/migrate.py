"""Alembic migrations through an ephemeral tunnel, one runner at a time.

`migrate()`: account guard, confirmation where it matters, password from Secrets Manager, a tunnel
on a free port, a PostgreSQL advisory lock held by a connection of our own for the whole run, then
`python -m alembic -c <ini> upgrade <rev>` as a child whose environment (never argv) carries
DATABASE_URL. The child's output is passed through with the password masked, its exit status is
ours, and the lock, the tunnel and its session are released however the run ends (Ctrl-C included).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import quote

from ops import aws
from ops import confirm as confirm_mod
from ops.config import PROJECT_ROOT, EnvConfig
from ops.dburl import ConnectionParams, through_tunnel
from ops.errors import AbortedError, CommandFailedError, ConfigError, OpsError

# One key for every bastionless migration runner: pg_try_advisory_lock takes a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"bastionless:migrate").digest()[:8], "big", signed=True)
APPLICATION_NAME = "bastionless-migrate"
CHILD_STOP_TIMEOUT = 15.0

Confirm = Callable[[str], str]
_UNKNOWN_REV = re.compile(r"Can't locate revision identified by '([^']+)'")


class MigrationLockedError(OpsError):
    """Another migration runner holds the advisory lock."""


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

    def format(self) -> str:
        current = set(self.current)
        pending = set(self.pending)
        width = max((len(r.revision) for r in self.history), default=4)
        lines = [f"migrations for {self.env} ({self.alembic_ini})",
                 f"current: {', '.join(self.current) or '(empty database: no revision applied)'}",
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
        return "\n".join(lines)


def alembic_ini(cfg: EnvConfig, override: str = "") -> Path:
    """The env's Alembic project ([migrations] alembic_ini, relative to the project root)."""
    raw = override or cfg.migrations.alembic_ini
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigError(f"no Alembic project at {path} ([migrations] alembic_ini in {cfg.source.name})",
                          next_step=f"set [migrations] alembic_ini in {cfg.source.name} to your alembic.ini")
    return path


def alembic_argv(ini: Path, *args: str) -> list[str]:
    """The alembic child's command line: nothing secret ever goes here."""
    return [sys.executable, "-m", "alembic", "-c", str(ini), *args]


def child_env(database_url: str) -> dict[str, str]:
    # libpq fills unset parameters from PG* variables: a PGHOSTADDR or PGSERVICE left in the
    # caller's shell must not send the migration somewhere else than the tunnel.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["DATABASE_URL"] = database_url
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
            reason: str = "", report: Callable[[str], None] | None = None) -> None:
    """Upgrade (or downgrade) the env's database to `revision`; raises CommandFailedError with
    Alembic's exit status when Alembic fails. `sql`: print the SQL only (offline, no AWS, no tunnel)."""
    path = alembic_ini(cfg, ini)
    command = "downgrade" if downgrade else "upgrade"
    if downgrade and not revision:
        raise OpsError("a downgrade needs a target revision", next_step="pass --revision -1 (one step) or an id")
    if sql and downgrade and ":" not in revision:
        # Offline, Alembic cannot read the current revision from the database: it needs both ends.
        raise OpsError(f"--sql for a downgrade needs a range FROM:TO, not {revision!r}",
                       next_step=f"invoke migrate-downgrade --env {cfg.name} --sql --revision 0003:0002")
    if sql:
        # Offline mode never connects: a URL naming only the dialect is enough for Alembic.
        code = run_alembic(path, [command, revision, "--sql"], url="postgresql://offline@localhost/offline")
        _check(code, command, cfg)
        return
    needed = cfg.is_prod or downgrade
    if needed and not yes and ask is None:
        # Nobody could answer: refuse before touching AWS.
        confirm_mod.require_terminal(f"alembic {command} {revision} on {cfg.name}")
    # A changing command checks the AWS account before it asks (and before it opens anything).
    account = aws.check_account(cfg)["Account"]
    confirm_action(cfg, f"alembic {command} {revision}", yes=yes, needed=needed, ask=ask, account=account)
    with through_tunnel(cfg, reason=reason or f"bastionless migrate: alembic {command} {revision}",
                        transport=transport, report=report) as conn:
        password = conn.credentials.password
        with migration_lock(conn.params, password, env=cfg.name):
            code = run_alembic(path, [command, revision], url=conn.params.url(password=password),
                               secrets=(password,))
    _check(code, command, cfg)


def migration_status(cfg: EnvConfig, *, transport: str = "auto", ini: str = "",
                     report: Callable[[str], None] | None = None) -> MigrationStatus:
    """Current revision (from the database, via `alembic current`), history and pending revisions."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    path = alembic_ini(cfg, ini)
    try:
        script = ScriptDirectory.from_config(Config(str(path)))
        known = {r.revision for r in script.walk_revisions()}
    except Exception as exc:  # configparser, Alembic's CommandError, a broken revision file: one line
        raise ConfigError(f"{_rel(path)} is not a usable Alembic project ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})",
                          next_step=f"fix {_rel(path)} (it needs [alembic] script_location), or point "
                                    f"[migrations] alembic_ini in {cfg.source.name} at a working one") from None
    with through_tunnel(cfg, reason="bastionless migrate-status", transport=transport, report=report) as conn:
        password = conn.credentials.password
        out: list[str] = []
        errors: list[str] = []
        # Captured, not shown: the table below says it better, and the log lines are noise.
        code = run_alembic(path, ["current"], url=conn.params.url(password=password), secrets=(password,),
                           stdout=io.StringIO(), stderr=io.StringIO(), stdout_lines=out, stderr_lines=errors)
    missing = next((m.group(1) for line in errors if (m := _UNKNOWN_REV.search(line))), "")
    if code != 0 and missing:
        raise OpsError(f"the {cfg.name} database is at revision {missing}, which {_rel(path)} does not have "
                       f"(a newer deploy, or another branch)",
                       next_step="update your checkout (git pull) and rerun; never downgrade from an old checkout")
    if code != 0:
        print("\n".join(errors), file=sys.stderr)
    _check(code, "current", cfg)
    # `alembic current` prints one line per applied head ("<rev> (head)"); its logging goes to stderr.
    current = tuple(tok for line in out if (tok := line.strip().split(" ", 1)[0]) in known)
    heads = tuple(script.get_heads())
    history = tuple(Revision(revision=r.revision, down_revision=_down(r.down_revision), message=r.doc or "",
                             is_head=r.is_head) for r in script.walk_revisions())
    pending = tuple(r.revision for r in reversed(list(script.iterate_revisions(heads, current or "base")))
                    if r.revision not in current)
    return MigrationStatus(env=cfg.name, alembic_ini=_rel(path), current=current, heads=heads, history=history,
                           pending=pending)


@contextmanager
def migration_lock(params: ConnectionParams, password: str, *, env: str) -> Iterator[None]:
    """Hold the migration advisory lock on a connection of our own for the `with` block.

    pg_try_advisory_lock never waits: a second runner fails at once and is told who holds it. The
    lock is session-level, so it is gone the moment this connection ends (even if we crash)."""
    import psycopg

    try:
        conn = psycopg.connect(params.conninfo(), password=password, application_name=APPLICATION_NAME,
                               connect_timeout=15, autocommit=True)
    except psycopg.Error as exc:
        raise OpsError(f"cannot connect to the {env} database through the tunnel: {_first_line(exc, password)}",
                       next_step=f"invoke doctor --env {env}") from None
    try:
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
            yield
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.Error:
                pass  # the connection is gone, and the lock with it
    finally:
        conn.close()


def run_alembic(ini: Path, args: Sequence[str], *, url: str, secrets: Sequence[str] = (),
                stdout: TextIO | None = None, stderr: TextIO | None = None,
                stdout_lines: list[str] | None = None, stderr_lines: list[str] | None = None) -> int:
    """Run `python -m alembic -c ini args...` with DATABASE_URL in its environment; return its exit status.

    Output is relayed line by line with every form of the secrets masked. On Ctrl-C the child gets
    SIGINT (then SIGTERM/SIGKILL if it lingers) and KeyboardInterrupt propagates to close the tunnel."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    masks = _masks(secrets)
    proc = subprocess.Popen(alembic_argv(ini, *args), env=child_env(url), cwd=ini.parent, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
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


def _check(code: int, command: str, cfg: EnvConfig) -> None:
    if code == 0:
        return
    if command in ("upgrade", "downgrade"):
        raise CommandFailedError(f"alembic {command} failed on {cfg.name} (exit status {code}); with PostgreSQL's "
                                 f"transactional DDL nothing of this run was applied",
                                 returncode=code, next_step=f"fix the revision, then: invoke migrate --env {cfg.name}")
    raise CommandFailedError(f"alembic {command} failed on {cfg.name} (exit status {code}); its error is above",
                             returncode=code, next_step=f"invoke doctor --env {cfg.name}")


def _down(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else ",".join(value)


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
