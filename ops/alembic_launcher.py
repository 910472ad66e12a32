"""Alembic's own command line, run inside the *project's* interpreter, reporting what it really did.

bastionless runs this file by path with the project's Python (`<python> alembic_launcher.py run -c
alembic.ini upgrade head`), so it imports nothing from bastionless: the standard library and the
project's own alembic and SQLAlchemy only. It must keep working on every Python the project may use
(3.9+), hence no newer syntax at run time.

Modes:
- `info`: the interpreter and its Alembic version, as JSON (is Alembic installed there at all?).
- `script -c INI`: the revision graph (heads, every revision) as JSON, read without any database.
- `run ALEMBIC-ARGS...`: `alembic ALEMBIC-ARGS...` unchanged, plus JSON lines appended to the file
  named by BASTIONLESS_MIGRATE_REPORT telling bastionless where env.py connected, each revision
  step, the heads Alembic believes it left, and how far the run got. Nothing written there contains a
  password (URLs are rendered with the password hidden).

Three adaptations, each because real env.py files need it:
- `Config.set_main_option(url)` goes through ConfigParser interpolation, so a URL-encoded password
  (`%40`...) raised "invalid interpolation syntax": a lone `%` is doubled (`%%` and `%(` are kept).
- With `--sql` no connection may be made: a connect attempt is refused and reported, because some
  env.py files connect even in offline mode.
- BASTIONLESS_HOST_MAP=`<name>=<address>` resolves the RDS host name to the tunnel's address for
  drivers that resolve names in Python (asyncpg), the way libpq's `hostaddr` does for psycopg, so
  TLS can verify the real name while the bytes go through the tunnel.
"""

from __future__ import annotations

import os
import sys

# Python put this file's folder (bastionless' ops/) first on sys.path: its secrets.py, config.py...
# would shadow the standard library and the project's own modules. Only the project's paths count.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
from typing import Any  # noqa: E402

REPORT_ENV = "BASTIONLESS_MIGRATE_REPORT"
HOST_MAP_ENV = "BASTIONLESS_HOST_MAP"
_LONE_PERCENT = re.compile(r"%%|%\(|%")

_state = {"phase": "env"}


def emit(**event: Any) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event, default=str) + "\n")


def escape_percent(value: str) -> str:
    """Double every `%` that is not already `%%` or the start of `%(name)s`."""
    return _LONE_PERCENT.sub(lambda m: "%%" if m.group(0) == "%" else m.group(0), value)


def _describe_url(url: Any) -> dict[str, Any]:
    return {"url": url.render_as_string(hide_password=True), "dialect": url.get_backend_name(),
            "host": url.host, "port": url.port, "database": url.database}


def _describe_connect(dialect: Any, cargs: Any, cparams: Any) -> dict[str, Any]:
    name = getattr(dialect, "name", "?")
    if name == "sqlite":
        path = cargs[0] if cargs else cparams.get("database", "")
        return {"url": f"sqlite:///{path}", "dialect": name, "host": None, "port": None, "database": path}
    host, port = cparams.get("host"), cparams.get("port")
    database = cparams.get("dbname") or cparams.get("database")
    where = f"{host or '(PGHOST)'}:{port or '(PGPORT)'}/{database or '(PGDATABASE)'}"
    return {"url": f"{name}://{cparams.get('user') or ''}@{where}", "dialect": name, "host": host,
            "port": int(port) if port else None, "database": database}


def _install_hooks(offline: bool) -> None:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    original_set = Config.set_section_option

    def set_section_option(self: Any, section: str, name: str, value: str) -> None:
        original_set(self, section, name, escape_percent(value) if isinstance(value, str) else value)

    Config.set_section_option = set_section_option  # type: ignore[method-assign]

    def on_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        target = _describe_connect(dialect, cargs, cparams)
        if offline:
            emit(event="offline_connect", **target)
            raise RuntimeError(f"bastionless: env.py tried to connect to {target['url']} in offline (--sql) "
                               f"mode; refused")
        emit(event="connect", **target)

    event.listen(Engine, "do_connect", on_connect)

    from alembic.script import ScriptDirectory

    original_env = ScriptDirectory.run_env

    def run_env(self: Any) -> None:
        emit(event="env_py", script_location=str(self.dir))
        original_env(self)

    ScriptDirectory.run_env = run_env  # type: ignore[method-assign]

    original_run = MigrationContext.run_migrations

    def run_migrations(self: Any, **kw: Any) -> None:
        info: dict[str, Any] = {"as_sql": bool(self.as_sql), "version_table": self.version_table,
                                "version_table_schema": self.version_table_schema}
        if self.connection is not None and not self.as_sql:
            info.update(_describe_url(self.connection.engine.url))
        emit(event="migrating", **info)
        _state["phase"] = "migrating"
        original_run(self, **kw)
        if not self.as_sql:
            emit(event="finished", heads=sorted(self.get_current_heads()))
        _state["phase"] = "finished"

    MigrationContext.run_migrations = run_migrations  # type: ignore[method-assign]

    original_init = MigrationContext.__init__

    def init(self: Any, *args: Any, **kw: Any) -> None:
        original_init(self, *args, **kw)

        def on_step(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
            emit(event="step", upgrade=bool(step.is_upgrade), up=list(step.up_revision_ids),
                 down=list(step.down_revision_ids), heads=sorted(heads))

        self.on_version_apply_callbacks = (*tuple(self.on_version_apply_callbacks), on_step)

    MigrationContext.__init__ = init  # type: ignore[method-assign]


def _install_host_map() -> None:
    raw = os.environ.get(HOST_MAP_ENV, "")
    if "=" not in raw:
        return
    name, address = raw.split("=", 1)
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        return original(address if host == name else host, *args, **kw)

    socket.getaddrinfo = getaddrinfo


def _script(ini: str) -> dict[str, Any]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(Config(ini))
    revisions = []
    for rev in script.walk_revisions():
        down = rev.down_revision
        revisions.append({"revision": rev.revision, "message": rev.doc or "", "is_head": bool(rev.is_head),
                          "down_revision": "" if down is None else down if isinstance(down, str) else ",".join(down)})
    return {"heads": list(script.get_heads()), "revisions": revisions}


def main(argv: list[str]) -> int:
    mode, rest = (argv[0], argv[1:]) if argv else ("", [])
    if mode == "info":
        try:
            import alembic
        except ImportError:
            alembic = None  # type: ignore[assignment]
        # `paths`: the directories imports come from (not this file's own); bastionless reuses this answer
        # while none of them changes (ops/migrate.py PROBE_CACHE).
        here = os.path.dirname(os.path.abspath(__file__))
        paths = [p for p in sys.path if p and os.path.isdir(p) and os.path.abspath(p) != here]
        print(json.dumps({"python": sys.version.split()[0], "executable": sys.executable, "prefix": sys.prefix,
                          "alembic": getattr(alembic, "__version__", "") if alembic else "", "paths": paths}))
        return 0
    if mode == "script" and len(rest) == 2 and rest[0] == "-c":
        print(json.dumps(_script(rest[1])))
        return 0
    if mode != "run":
        print("usage: alembic_launcher.py info | script -c INI | run ALEMBIC-ARGS...", file=sys.stderr)
        return 2
    _install_host_map()
    _install_hooks(offline="--sql" in rest)
    from alembic.config import main as alembic_main

    emit(event="start", pid=os.getpid())
    try:
        alembic_main(argv=rest, prog="alembic")
    except SystemExit as exc:
        emit(event="exit", phase=_state["phase"], code=exc.code if isinstance(exc.code, int) else 1)
        raise
    except KeyboardInterrupt:
        # invoke migrate passes on Ctrl-C or its own SIGTERM as SIGINT: one line, no traceback (the caller's
        # report says what the database holds now; PostgreSQL rolls back the unfinished transaction).
        emit(event="exit", phase=_state["phase"], code=130, error="KeyboardInterrupt")
        print("alembic: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        emit(event="exit", phase=_state["phase"], code=1, error=type(exc).__name__)
        raise
    emit(event="exit", phase=_state["phase"], code=0)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # before Alembic started (importing it takes a moment)
        print("alembic: interrupted", file=sys.stderr)
        sys.exit(130)
