"""libpq client set-up for an environment: a `pg_service.conf` entry and, on request, a `.pgpass` line.

With the entry, `psql service=bastionless-<env>` (or `PGSERVICE=bastionless-<env>` for any libpq
tool) reaches the database through `invoke tunnel --env <env>` with the right TLS parameters. The
password goes only into `.pgpass`, only when asked, and that file is always mode 0600 (libpq ignores
it otherwise). Every other section and line of both files is kept exactly as it was.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ops.config import EnvConfig
from ops.dburl import ConnectionParams
from ops.errors import OpsError
from ops.fileio import atomic_write

_SECTION_RE = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


def service_name(cfg: EnvConfig) -> str:
    return f"bastionless-{cfg.name}"


def service_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where libpq looks for the per-user service file: $PGSERVICEFILE, else ~/.pg_service.conf."""
    environ = os.environ if environ is None else environ
    return Path(environ["PGSERVICEFILE"]) if environ.get("PGSERVICEFILE") else Path.home() / ".pg_service.conf"


def pgpass_file(environ: Mapping[str, str] | None = None) -> Path:
    """$PGPASSFILE, else ~/.pgpass (libpq's own lookup; Windows uses %APPDATA%/postgresql/pgpass.conf)."""
    environ = os.environ if environ is None else environ
    if environ.get("PGPASSFILE"):
        return Path(environ["PGPASSFILE"])
    if os.name == "nt" and environ.get("APPDATA"):
        return Path(environ["APPDATA"]) / "postgresql" / "pgpass.conf"
    return Path.home() / ".pgpass"


def service_section(name: str, params: ConnectionParams) -> str:
    # pg_service.conf takes each value verbatim to the end of the line: no quoting, no newlines.
    for key, value in params.keywords().items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key} contains a line break")
    body = "".join(f"{k}={v}\n" for k, v in params.keywords().items())
    return f"[{name}]\n{body}"


def merge_service(text: str, name: str, section: str) -> str:
    """`text` with section `name` replaced by `section` (or appended); all other lines kept."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    replaced = False
    skipping = False
    for line in lines:
        m = _SECTION_RE.match(line)
        if m:
            skipping = m.group("name").strip() == name
            if skipping and not replaced:
                out.append(section)
                replaced = True
            if skipping:
                continue
        if not skipping:
            out.append(line)
    if not replaced:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        if out and out[-1].strip():
            out.append("\n")
        out.append(section)
    return "".join(out)


def write_service(cfg: EnvConfig, params: ConnectionParams, *, path: Path | None = None) -> Path:
    path = path or service_file()
    old = path.read_text() if path.exists() else ""
    new = merge_service(old, service_name(cfg), service_section(service_name(cfg), params))
    if new != old:
        atomic_write(path, new, durable=True, mode=(path.stat().st_mode & 0o7777) if path.exists() else 0o644)
    return path


def pgpass_line(params: ConnectionParams, password: str) -> str:
    """host:port:dbname:user:password, `:` and `\\` escaped. libpq matches `host` (not hostaddr)."""
    fields = (params.host, str(params.port), params.dbname, params.user, password)
    if any("\n" in f or "\r" in f for f in fields):
        raise ValueError("a .pgpass field contains a line break")
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n"


def write_pgpass(params: ConnectionParams, password: str, *, path: Path | None = None) -> Path:
    """Add or replace the line for this host/port/db/user; the file ends up mode 0600 either way."""
    path = path or pgpass_file()
    line = pgpass_line(params, password)
    # Fields may hold escaped colons: compare the four unescaped fields before the password.
    key = _pgpass_key(line)
    old = path.read_text() if path.exists() else ""
    kept = [ln for ln in old.splitlines(keepends=True) if _pgpass_key(ln) != key]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    atomic_write(path, "".join(kept) + line, mode=0o600, durable=True)
    return path


def _pgpass_key(line: str) -> tuple[str, ...]:
    fields: list[str] = []
    cur = ""
    escaped = False
    for ch in line.rstrip("\r\n"):
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":" and len(fields) < 4:
            fields.append(cur)
            cur = ""
        else:
            cur += ch
    return tuple(fields)


def configure(cfg: EnvConfig, params: ConnectionParams, *, pgpass: bool = False) -> str:
    """`invoke db-url --pgservice [--pgpass]`: write the entry (and the password line); say what was written."""
    if pgpass and cfg.people:
        raise OpsError(f"--pgpass: {cfg.name} lists people, whose tunnel needs no password; there is none to "
                       f"store", next_step=f"invoke db-url --env {cfg.name} --pgservice")
    path = write_service(cfg, params)
    name = service_name(cfg)
    lines = [f"wrote [{name}] to {path}"]
    if pgpass:
        from ops.secrets import database_credentials

        creds = database_credentials(cfg)
        lines.append(f"wrote the password line to {write_pgpass(params, creds.password)} (mode 0600)")
    lines.append(f"next: invoke tunnel --env {cfg.name}, then: psql service={name}")
    return "\n".join(lines)
