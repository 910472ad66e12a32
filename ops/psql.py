"""`invoke psql`: psql through an ephemeral tunnel, the password in the child's PGPASSWORD only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence

from ops.config import EnvConfig
from ops.dbtunnel import sigterm_as_interrupt, through_tunnel
from ops.errors import CommandFailedError, ToolMissingError
from ops.facts import PSQL_ENV

INSTALL_HINT = ("install the PostgreSQL client: apt-get install postgresql-client (Debian/Ubuntu), "
                "dnf install postgresql (Fedora), brew install libpq && brew link --force libpq (macOS)")


def psql_binary() -> str:
    override = os.environ.get(PSQL_ENV)
    if override and not (os.path.isfile(override) and os.access(override, os.X_OK)):
        raise ToolMissingError(f"BASTIONLESS_PSQL={override} is not an executable file",
                               next_step="point BASTIONLESS_PSQL at psql (e.g. /usr/bin/psql), or unset it")
    path = override or shutil.which("psql")
    if not path:
        raise ToolMissingError("psql is not installed (not found on PATH)", next_step=INSTALL_HINT)
    return path


def psql_argv(binary: str, *, command: str = "", args: Sequence[str] = ()) -> list[str]:
    """psql's command line: connection settings and the password travel in the environment, not here."""
    argv = [binary, "--set", "ON_ERROR_STOP=1"]
    if command:
        argv += ["--command", command]
    return [*argv, *args]


def child_env(extra: dict[str, str], *, app: str = "bastionless-psql") -> dict[str, str]:
    """The environment of a libpq tool (psql, pg_dump, pg_restore) run through a tunnel."""
    # A PGSERVICE or PGHOSTADDR from the caller's shell must not redirect our connection.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    env["PGAPPNAME"] = app
    env["PGCONNECT_TIMEOUT"] = "15"
    return env


def run_psql(cfg: EnvConfig, *, command: str = "", args: Sequence[str] = (), transport: str = "auto",
             reason: str = "", capture: bool = False, report: Callable[[str], None] | None = None,
             break_glass: bool = False) -> subprocess.CompletedProcess[str]:
    """Run psql (interactive, or `command` with -c) against the env's database; returns psql's result.

    Where the env lists people: as the caller's own DB user through the auth proxy, with no password at
    all; `break_glass`: as the master user, its password fetched from Secrets Manager (which only the
    break-glass role may read on a real env)."""
    from ops.identity_tunnel import break_glass_notice, choose_target, open_auth_tunnel

    binary = psql_binary()
    if choose_target(cfg, raw=break_glass) == "postgres-auth":
        # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the session is terminated as on the master path.
        with sigterm_as_interrupt(), open_auth_tunnel(cfg, reason=reason or "bastionless psql", transport=transport,
                                                      report=report) as info:
            env = child_env({"PGHOST": info.local_host, "PGPORT": str(info.local_port),
                              "PGDATABASE": info.db_name, "PGUSER": info.db_user})
            return _run(binary, command=command, args=args, env=env, capture=capture)
    if break_glass:
        (report or print)(break_glass_notice(cfg, "psql"))
    with through_tunnel(cfg, reason=reason or "bastionless psql", transport=transport, report=report,
                        break_glass=break_glass) as conn:
        env = child_env(conn.params.libpq_env(password=conn.credentials.password))
        return _run(binary, command=command, args=args, env=env, capture=capture)


def _run(binary: str, *, command: str, args: Sequence[str], env: dict[str, str],
         capture: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(psql_argv(binary, command=command, args=args), env=env, text=True,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None)
    # psql handles Ctrl-C itself (cancels the running query); we only wait for it to finish.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        out, err = proc.communicate()
    except BaseException:
        # SIGTERM (ops.dbtunnel.sigterm_as_interrupt) or an error: psql goes too, then the tunnel closes.
        proc.terminate()
        proc.wait()
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out or "", err or "")


def query(cfg: EnvConfig, sql: str, *, transport: str = "auto") -> str:
    """One SQL command through a fresh tunnel; psql's output (for the demo and scripts)."""
    result = run_psql(cfg, command=sql, args=["--no-psqlrc"], transport=transport, capture=True)
    if result.returncode != 0:
        raise CommandFailedError(f"psql failed on {cfg.name} (exit status {result.returncode}): "
                                 f"{result.stderr.strip()}", returncode=result.returncode)
    return result.stdout


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
