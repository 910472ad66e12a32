"""`invoke db-dump` / `invoke db-restore`: pg_dump -Fd -j N and pg_restore -j N through a pool of N sessions.

One Session Manager session carries ~1 MB/s on AWS, so a parallel dump through one session is no faster
than a serial one; a pool gives each job a session of its own. Credentials travel as for psql: in the
child's environment (the auth proxy's passwordless port where the env lists people, else the master
password from Secrets Manager), never in argv.

Data handling: a dump is the database's data on this machine. The directory is made 0700 (its files
0600), and the summary says what was dumped and where, so nobody has to guess what a laptop holds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ops.aws import check_account
from ops.config import EnvConfig
from ops.confirm import confirm
from ops.errors import CommandFailedError, OpsError, ToolMissingError
from ops.psql import INSTALL_HINT, child_env
from ops.tunnel import LaneStats, Meter, TunnelInfo, check_sessions

Report = Callable[[str], None]
PROGRESS_INTERVAL = 2.0
# A session moving less than this in an interval is idle (the leader connection of pg_dump, say):
# idle time says nothing about what one session can carry.
BUSY_RATE = 0.05  # MB/s


class DumpError(OpsError):
    """The dump or restore directory cannot be used."""


def pg_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ToolMissingError(f"{name} is not installed (not found on PATH)", next_step=INSTALL_HINT)
    return path


def dump_argv(binary: str, *, directory: Path, jobs: int, schema_only: bool = False,
              tables: Sequence[str] = ()) -> list[str]:
    """pg_dump's command line: where to connect and the password are in its environment, not here."""
    argv = [binary, "--format=directory", f"--jobs={jobs}", f"--file={directory}", "--no-password"]
    if schema_only:
        argv.append("--schema-only")
    return argv + [f"--table={table}" for table in tables]


def restore_argv(binary: str, *, directory: Path, jobs: int, dbname: str, schema_only: bool = False,
                 tables: Sequence[str] = ()) -> list[str]:
    # Roles differ between environments: the target's user owns what it restores, and grants are the
    # target's own (the stack's), not the source's.
    argv = [binary, f"--dbname={dbname}", f"--jobs={jobs}", "--no-owner", "--no-privileges", "--exit-on-error",
            "--no-password"]
    if schema_only:
        argv.append("--schema-only")
    return [*argv, *(f"--table={table}" for table in tables), str(directory)]


@dataclass
class Progress:
    """Bytes through the tunnel's sessions, sampled as the tool runs: progress lines and the summary."""

    started: float
    meter: Meter = field(default_factory=Meter)
    total: int = 0
    # Per session: (bytes moved while busy, seconds busy), for what one session alone would manage.
    busy: dict[str, tuple[int, float]] = field(default_factory=dict)
    _last: float = 0.0
    _seen: dict[str, int] = field(default_factory=dict)

    def sample(self, stats: list[LaneStats], now: float) -> float:
        """Record a sample; returns the current MB/s over all sessions."""
        interval = now - (self._last or self.started)
        self._last = now
        rows = self.meter.sample(stats, now)
        for sid, size, rate, _conns in rows:
            moved = size - self._seen.get(sid, 0)
            self._seen[sid] = size
            self.total += max(moved, 0)
            if rate >= BUSY_RATE:
                done, seconds = self.busy.get(sid, (0, 0.0))
                self.busy[sid] = (done + moved, seconds + interval)
        return sum(rate for _sid, _size, rate, _conns in rows)

    def one_session_rate(self) -> float:
        """MB/s of the best session while it was busy: what a single session would have carried."""
        rates = [moved / seconds / 1e6 for moved, seconds in self.busy.values() if seconds > 0]
        return max(rates, default=0.0)

    def summary(self, *, verb: str, sessions: int, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        if not self.total:
            # --sessions 1 with the plugin: it listens on the port itself, so no byte passes our counters.
            return f"{verb} through {sessions} session(s) in {elapsed:.1f} s (no byte counts for this transport)"
        line = (f"{verb} {self.total / 1e6:.1f} MB through {sessions} session(s) in {elapsed:.1f} s "
                f"({self.total / 1e6 / elapsed:.2f} MB/s)")
        single = self.one_session_rate()
        if sessions > 1 and single > 0:
            alone = self.total / 1e6 / single
            line += (f"; one session (at its {single:.2f} MB/s) would have taken ~{alone:.0f} s "
                     f"({alone / elapsed:.1f}x longer)")
        return line


@contextmanager
def _pooled(cfg: EnvConfig, *, jobs: int, reason: str, transport: str,
            report: Report) -> Iterator[tuple[TunnelInfo, dict[str, str]]]:
    """A pool of `jobs` sessions, and the libpq environment to reach the database through it."""
    from ops.dbtunnel import through_tunnel
    from ops.identity_tunnel import choose_target, open_auth_tunnel

    if choose_target(cfg, raw=False) == "postgres-auth":
        with open_auth_tunnel(cfg, reason=reason, transport=transport, report=report, sessions=jobs) as info:
            yield info, {"PGHOST": info.local_host, "PGPORT": str(info.local_port), "PGDATABASE": info.db_name,
                         "PGUSER": info.db_user}
        return
    with through_tunnel(cfg, reason=reason, transport=transport, report=report, sessions=jobs) as conn:
        yield conn.tunnel, conn.params.libpq_env(password=conn.credentials.password)


def _run_with_progress(argv: list[str], env: dict[str, str], info: TunnelInfo, *, verb: str,
                       report: Report) -> Progress:
    progress = Progress(started=time.monotonic())
    stats = info.stats or (lambda: [])
    progress.sample(stats(), progress.started)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    try:
        while True:
            try:
                proc.wait(PROGRESS_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                rate = progress.sample(stats(), time.monotonic())
                report(f"{verb}: {progress.total / 1e6:.1f} MB so far, {rate:.2f} MB/s now "
                       f"({len(info.sessions)} session(s))")
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    progress.sample(stats(), time.monotonic())
    if proc.returncode:
        raise CommandFailedError(f"{Path(argv[0]).name} failed (exit status {proc.returncode}); see its output above",
                                 returncode=proc.returncode)
    return progress


def _prepare_dump_dir(directory: Path) -> Path:
    directory = directory.expanduser().absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise DumpError(f"{directory} already exists and is not an empty directory (pg_dump -Fd writes a new one)",
                        next_step="pass a new directory, e.g. dumps/<env>-<date>")
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _lock_down(directory: Path) -> int:
    """0700 on the directory, 0600 on its files (pg_dump follows the umask for files); returns their bytes."""
    directory.chmod(0o700)
    size = 0
    for path in directory.iterdir():
        path.chmod(0o600)
        size += path.stat().st_size
    return size


def dumped_tables(directory: Path) -> list[str]:
    """The tables whose data the dump holds, from its table of contents (read locally, no connection)."""
    listing = subprocess.run([pg_tool("pg_restore"), "--list", str(directory)], capture_output=True, text=True,
                             check=False)
    tables = []
    for line in listing.stdout.splitlines():
        if line.startswith(";") or " TABLE DATA " not in line:
            continue
        # "<id>; <oid> <oid> TABLE DATA <schema> <name> <owner>"
        parts = line.split(" TABLE DATA ", 1)[1].split()
        if len(parts) >= 2:
            tables.append(f"{parts[0]}.{parts[1]}")
    return tables


def dump(cfg: EnvConfig, directory: Path, *, jobs: int, schema_only: bool = False, tables: Sequence[str] = (),
         transport: str = "auto", reason: str = "", report: Report = print, sessions: int | None = None) -> str:
    """pg_dump -Fd -j `jobs` of the env's database into `directory` (new, 0700); returns the summary.
    `sessions`: how many carry it (default one per job; bench/pool compares with one)."""
    check_sessions(jobs)
    binary = pg_tool("pg_dump")
    target = _prepare_dump_dir(directory)
    with _pooled(cfg, jobs=check_sessions(sessions or jobs), reason=reason or f"bastionless db-dump ({jobs} jobs)",
                 transport=transport, report=report) as (info, libpq):
        argv = dump_argv(binary, directory=target, jobs=jobs, schema_only=schema_only, tables=tables)
        report(f"dumping {info.db_name} of {cfg.name} with {jobs} job(s) through {len(info.sessions)} session(s) "
               f"into {target}")
        progress = _run_with_progress(argv, child_env(libpq, app="bastionless-dump"), info, verb="dumped",
                                      report=report)
        sessions = len(info.sessions)
    size = _lock_down(target)
    names = dumped_tables(target)
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    what = "schema only" if schema_only else f"data of {len(names)} table(s)" + (f": {shown}" if names else "")
    return "\n".join([
        progress.summary(verb="dumped", sessions=sessions, now=time.monotonic()),
        f"dump of {cfg.name} (database {info.db_name}): {what}",
        f"written to {target} ({size / 1e6:.1f} MB on disk, directory mode 0700, files 0600): this is "
        f"{cfg.name}'s data on this machine; delete it when done (rm -r {target})",
    ])


def restore(cfg: EnvConfig, directory: Path, *, jobs: int, schema_only: bool = False, tables: Sequence[str] = (),
            transport: str = "auto", reason: str = "", yes: bool = False, report: Report = print,
            ask: Callable[[str], str] | None = None) -> str:
    """pg_restore -j `jobs` of a directory dump into a non-production env's database; returns the summary."""
    check_sessions(jobs)
    if cfg.is_prod:
        raise DumpError(f"{cfg.name} is a production environment: db-restore never writes into one; refused",
                        next_step="restore into a non-production env, e.g. invoke db-restore --env staging DIR")
    source = directory.expanduser().absolute()
    if not (source / "toc.dat").is_file():
        raise DumpError(f"{source} is not a directory dump (no toc.dat)",
                        next_step="pass a directory written by invoke db-dump (pg_dump -Fd)")
    binary = pg_tool("pg_restore")
    account = check_account(cfg)["Account"]
    confirm(cfg, action=f"Restore {source} (pg_restore, {jobs} jobs) into the database of", account=account,
            what="db-restore", yes=yes, ask=ask)
    with _pooled(cfg, jobs=jobs, reason=reason or f"bastionless db-restore ({jobs} jobs)", transport=transport,
                 report=report) as (info, libpq):
        argv = restore_argv(binary, directory=source, jobs=jobs, dbname=info.db_name, schema_only=schema_only,
                            tables=tables)
        report(f"restoring {source} into {info.db_name} of {cfg.name} with {jobs} job(s) through "
               f"{len(info.sessions)} session(s)")
        progress = _run_with_progress(argv, child_env(libpq, app="bastionless-restore"), info, verb="restored",
                                      report=report)
        sessions = len(info.sessions)
    return "\n".join([
        progress.summary(verb="restored", sessions=sessions, now=time.monotonic()),
        f"restored {source} into {cfg.name} (database {info.db_name})",
    ])

