"""Add or update the environment's PostgreSQL connection in DBeaver's `data-sources.json`.

The format follows DBeaver's own writer (`DataSourceSerializerModern.saveDataSources` /
`saveDataSource`): top-level `folders` then `connections` keyed by connection id; a connection has
`provider`, `driver`, `name`, optional `save-password`, `folder` and a `configuration` object (`host`,
`port` as a string, `database`, `url`, `configurationType`, `type` = connection type id, `auth-model`,
`handlers`). The user name may sit in `configuration.user` (DBeaver reads it there, #6564); the
password is never written (`save-password` false: DBeaver asks when connecting).

A rerun merges into our existing entry instead of replacing it: what we own (driver, name, folder,
host, port, database, URL, connection type, user, auth model, our SSL handler, no saved password)
is set; whatever the user added in DBeaver (colour, bootstrap queries, navigator settings, other
handlers, a keep-alive below the Session Manager idle timeout, closing idle connections) is kept,
and the result lists what changed. Keep-alive (`keepAlive`, seconds) is set below the env's Session
Manager idle timeout so an idle DBeaver connection does not lose its session; `closeIdleConnection`
is written as DBeaver's own dialog writes it. `--start-tunnel` registers DBeaver's before-connect
event (`events.BEFORE_CONNECT`) to run `invoke tunnel --background` for the env.

We edit the existing text in place: only our folder and our connection are inserted or replaced,
every other byte stays as DBeaver (or anyone) wrote it, and the result must parse to exactly the
intended merge before it is written. What we add is laid out as DBeaver's Gson writer would (tab
indent, `": "`, HTML-safe escapes such as `\\u003d` for `=`). The file is backed up first and replaced
atomically; backups and temporary files never match `data-sources*.json`, the names DBeaver loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.config import PROJECT_ROOT, EnvConfig
from ops.dburl import ca_bundle_path
from ops.errors import OpsError
from ops.fileio import atomic_write

FOLDER = "bastionless"
PROJECT = "General"
PROVIDER = "postgresql"
DRIVER = "postgres-jdbc"
SSL_HANDLER = "postgre_ssl"
# DBeaver's built-in connection types (DBPConnectionType): prod asks before committing, test is yellow.
CONNECTION_TYPES = {"prod": "prod", "staging": "test"}
# Keys of our entry the user may change in DBeaver and we then leave alone (when they do not conflict).
USER_TUNABLE = ("keepAlive", "closeIdleConnection")
# Gson's JsonWriter (htmlSafe, DBeaver's CONFIG_GSON default) escapes these inside strings.
_GSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "=": "\\u003d", "'": "\\u0027",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}


class DBeaverConfigError(OpsError):
    """The existing data-sources.json cannot be read or merged."""


@dataclass(frozen=True)
class DBeaverResult:
    path: Path
    connection_id: str
    changed: bool
    backup: Path | None
    entry: dict[str, Any]
    # What this run changed in our entry ("added" for a new one), and the user's own settings kept.
    changes: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()


def default_workspace(*, system: str = "", home: Path | None = None,
                      environ: Mapping[str, str] | None = None) -> Path:
    """DBeaver's default workspace (`RuntimeUtils.getWorkingDirectory` + `workspace6`)."""
    system = system or platform.system()
    home = home or Path.home()
    environ = os.environ if environ is None else environ
    if system == "Windows":
        base = Path(environ.get("APPDATA") or home) / "DBeaverData"
    elif system == "Darwin":
        base = home / "Library" / "DBeaverData"
    else:
        # DBeaver reads XDG_DATA_HOME as a Java system property, not the environment: in practice
        # always ~/.local/share. It keeps using a legacy ".DBeaverData" when only that exists (#6316).
        data_home = home / ".local" / "share"
        good, bad = data_home / "DBeaverData", data_home / ".DBeaverData"
        base = bad if not good.exists() and bad.exists() else good
    return base / "workspace6"


def data_sources_path(workspace: Path) -> Path:
    return workspace / PROJECT / ".dbeaver" / "data-sources.json"


def connection_id(cfg: EnvConfig) -> str:
    """Stable per environment, so a rerun updates the connection instead of adding another."""
    return f"{DRIVER}-bastionless-{cfg.name}"


def connection_type(cfg: EnvConfig) -> str:
    if cfg.is_prod:
        return "prod"
    return CONNECTION_TYPES.get(cfg.name, "test" if cfg.name.startswith("staging") else "dev")


def keep_alive_seconds(cfg: EnvConfig) -> int:
    """A keep-alive well below the Session Manager idle timeout (a quarter of it, at most 5 minutes)."""
    idle = cfg.session.idle_timeout_minutes * 60
    return max(15, min(300, idle // 4))


def tunnel_command(cfg: EnvConfig, port: int) -> str:
    """The before-connect command: start the env's tunnel in the background on DBeaver's port."""
    argv = [sys.executable, "-m", "invoke", "tunnel", "--env", cfg.name, "--background", "--local-port", str(port),
            "--reason", "DBeaver connect"]
    # DBeaver runs event commands through the shell: quote every argument.
    return shlex.join(argv)


def connection_entry(cfg: EnvConfig, *, user: str, port: int | None = None,
                     start_tunnel: bool = False, proxy: bool = False) -> dict[str, Any]:
    """Our connection as DBeaver stores it: localhost, the env's tunnel port, no password.

    `proxy`: the tunnel is the auth proxy (the env lists people): the user is the caller's own DB user,
    the local hop has no TLS (the proxy does it upstream), and the empty password counts as saved, so
    DBeaver never prompts; the proxy logs in with an IAM token."""
    port = cfg.tunnel.local_port if port is None else port
    if not port:
        raise OpsError(f"[tunnel] local_port of {cfg.name} is 0 (any free port): DBeaver needs a fixed port",
                       next_step=f"pass --port N (the port of your tunnel), or set [tunnel] local_port in "
                                 f"{cfg.source.name}")
    if not 1 <= port <= 65535:
        raise OpsError(f"port {port} is not a TCP port", next_step=f"invoke dbeaver --env {cfg.name} --port 5433")
    db = cfg.database.name
    conf: dict[str, Any] = {
        "host": "localhost",
        "port": str(port),
        "database": db,
        "url": f"jdbc:postgresql://localhost:{port}/{db}",
        "configurationType": "MANUAL",
        "type": connection_type(cfg),
        "keepAlive": keep_alive_seconds(cfg),
        "closeIdleConnection": True,
        "user": user,
        "auth-model": "native",
    }
    if start_tunnel:
        conf["events"] = {"BEFORE_CONNECT": {
            "enabled": True, "show-panel": False, "wait-process": True, "wait-process-timeout": 60000,
            "terminate-at-disconnect": False, "pauseAfterExecute": 0, "workingDirectory": str(PROJECT_ROOT),
            "command": tunnel_command(cfg, port)}}
    ssl = {} if proxy else _ssl_handler(cfg)
    if ssl:
        conf["handlers"] = {SSL_HANDLER: ssl}
    if proxy:
        return {
            "provider": PROVIDER, "driver": DRIVER, "name": f"bastionless {cfg.name}",
            "description": f"{cfg.name} RDS as {user} through the bastionless auth proxy: run `invoke tunnel --env "
                           f"{cfg.name}` first. No password: the proxy signs an IAM token per connection.",
            "save-password": True, "folder": FOLDER, "configuration": conf,
        }
    return {
        "provider": PROVIDER,
        "driver": DRIVER,
        "name": f"bastionless {cfg.name}",
        "description": f"{cfg.name} RDS through the Session Manager tunnel: run `invoke tunnel --env {cfg.name}` "
                       f"first. Password: Secrets Manager (not saved).",
        "save-password": False,
        "folder": FOLDER,
        "configuration": conf,
    }


def _ssl_handler(cfg: EnvConfig) -> dict[str, Any]:
    mode = cfg.database.sslmode
    if mode == "disable":
        return {}
    props: dict[str, str] = {}
    bundle = ca_bundle_path(cfg)
    if mode in ("verify-ca", "verify-full") and bundle:
        # pgJDBC verifies the hostname against `localhost` (it has no libpq hostaddr), which the RDS
        # certificate does not name: verify the chain (verify-ca) instead of failing every connect.
        mode = "verify-ca"
        props["ssl.method"] = "CERTIFICATES"
        props["ssl.ca.cert"] = bundle
    elif mode == "verify-full":
        mode = "verify-ca"
    props["sslMode"] = mode
    return {"type": "CONFIG", "enabled": True, "save-password": False, "properties": props}


def merge_entry(old: Any, ours: dict[str, Any], cfg: EnvConfig) -> tuple[dict[str, Any], list[str], list[str]]:
    """Our entry merged over the existing one: (entry, what changed, the user's own settings kept)."""
    if not isinstance(old, dict):
        return ours, ["added"], []
    entry = dict(old)
    entry.update({k: v for k, v in ours.items() if k != "configuration"})
    found = old.get("configuration")
    old_conf: dict[str, Any] = found if isinstance(found, dict) else {}
    conf = dict(old_conf)
    kept = sorted(k for k in old if k not in ours)
    for key, value in ours["configuration"].items():
        have = old_conf.get(key)
        if key == "keepAlive" and isinstance(have, int) and 0 < have <= value:
            continue  # the user's shorter keep-alive also stays below the idle timeout
        if key == "closeIdleConnection" and isinstance(have, bool):
            continue
        if key in ("handlers", "events") and isinstance(have, dict):
            value = {**have, **value}
        conf[key] = value
    if "events" not in ours["configuration"] and isinstance(conf.get("events"), dict):
        # Without --start-tunnel, drop only a before-connect hook we registered ourselves.
        hook = conf["events"].get("BEFORE_CONNECT")
        if isinstance(hook, dict) and "invoke tunnel --env" in str(hook.get("command", "")):
            conf["events"] = {k: v for k, v in conf["events"].items() if k != "BEFORE_CONNECT"}
            if not conf["events"]:
                del conf["events"]
    if "handlers" not in ours["configuration"] and isinstance(conf.get("handlers"), dict):
        # TLS turned off for the env: our SSL handler goes, the user's other handlers stay.
        conf["handlers"] = {k: v for k, v in conf["handlers"].items() if k != SSL_HANDLER}
        if not conf["handlers"]:
            del conf["handlers"]
    entry["configuration"] = conf
    kept += sorted(f"configuration.{k}" for k in old_conf if k not in ours["configuration"])
    kept += sorted(f"configuration.{k}" for k in USER_TUNABLE
                   if k in old_conf and old_conf[k] != ours["configuration"].get(k) and conf.get(k) == old_conf[k])
    return entry, _differences(old, entry), kept


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    found: list[str] = []
    for key in list(dict.fromkeys([*old, *new])):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key != "events":
            found += _differences(a, b, f"{prefix}{key}.")
        elif key not in old:
            found.append(f"{prefix}{key} set")
        elif key not in new:
            found.append(f"{prefix}{key} removed")
        else:
            found.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def merge(document: dict[str, Any], cfg: EnvConfig, entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of `document` with our folder and connection added or replaced; all else untouched."""
    out = dict(document)
    folders = out.get("folders")
    if folders is None:
        # DBeaver writes folders first: keep that order for a new file.
        out = {"folders": {}, **out}
        folders = out["folders"]
    if not isinstance(folders, dict):
        raise DBeaverConfigError("\"folders\" in data-sources.json is not an object",
                                 next_step="fix the file in DBeaver (or restore its backup), then rerun")
    if FOLDER not in folders:
        out["folders"] = {**folders, FOLDER: {}}
    connections = out.get("connections", {})
    if not isinstance(connections, dict):
        raise DBeaverConfigError("\"connections\" in data-sources.json is not an object",
                                 next_step="fix the file in DBeaver (or restore its backup), then rerun")
    out["connections"] = {**connections, connection_id(cfg): entry}  # same position when it already existed
    return out


def gson_dumps(document: Any, *, level: int = 0) -> str:
    """JSON as DBeaver's Gson writer lays it out (tab indent, HTML-safe escapes, no final newline),
    indented for nesting `level` when spliced into a document."""
    text = json.dumps(document, indent="\t", ensure_ascii=False)
    if level:
        text = text.replace("\n", "\n" + "\t" * level)
    # These characters can only occur inside strings in JSON text, so a plain replace is exact.
    for char, escaped in _GSON_ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def write_config(cfg: EnvConfig, *, user: str, workspace: Path | None = None, port: int | None = None,
                 dry_run: bool = False, start_tunnel: bool = False, proxy: bool = False) -> DBeaverResult:
    """Add or update the env's connection in `<workspace>/General/.dbeaver/data-sources.json`."""
    path = data_sources_path(workspace or default_workspace())
    ours = connection_entry(cfg, user=user, port=port, start_tunnel=start_tunnel, proxy=proxy)
    original = path.read_bytes() if path.exists() else None
    document: dict[str, Any] = {}
    text = ""
    if original is not None and original.strip():
        try:
            text = original.decode("utf-8")
            loaded = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DBeaverConfigError(f"{path} is not valid JSON ({exc}); it was left unchanged",
                                     next_step="fix or move the file (DBeaver recreates it), then rerun") from None
        if not isinstance(loaded, dict):
            raise DBeaverConfigError(f"{path} is not a JSON object; it was left unchanged",
                                     next_step="fix or move the file, then rerun")
        document = loaded
    connections = document.get("connections")
    old = connections.get(connection_id(cfg)) if isinstance(connections, dict) else None
    entry, changes, kept = merge_entry(old, ours, cfg)
    wanted = merge(document, cfg, entry)
    result = DBeaverResult(path=path, connection_id=connection_id(cfg), changed=False, backup=None, entry=entry,
                           changes=tuple(changes), kept=tuple(kept))
    if dry_run or (original is not None and wanted == document):
        return dataclasses.replace(result, changes=() if not dry_run else result.changes)
    new = (splice(text, cfg, entry) if text else gson_dumps(wanted)).encode("utf-8")
    if json.loads(new) != wanted:  # the splice must mean exactly the merge; never write anything else
        raise DBeaverConfigError(f"could not merge into {path} safely; it was left unchanged",
                                 next_step=f"add the connection by hand: invoke dbeaver --env {cfg.name} --print")
    backup = None
    if original is not None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        backup = path.with_name(f"{path.name}.{stamp}.bak")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.{stamp}-{n}.bak")
            n += 1
        shutil.copy2(path, backup)
    atomic_write(path, new, mode=path.stat().st_mode & 0o7777 if path.exists() else 0o644, durable=True)
    return dataclasses.replace(result, changed=True, backup=backup)


# ---- text splicing: change only our folder and connection, leave every other byte alone -------

def splice(text: str, cfg: EnvConfig, entry: dict[str, Any]) -> str:
    """`text` (a JSON object) with our folder and connection inserted or replaced in place."""
    top = _object_members(text, _skip_ws(text, 0))
    if not top:
        return gson_dumps(merge({}, cfg, entry))
    members = {key: span for key, *span in top}
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied back to front
    cid = connection_id(cfg)
    if "connections" in members:
        _, vstart, vend = members["connections"]
        edits.append(_set_member(text, vstart, vend, cid, entry, depth=2))
    else:
        edits.append(_set_member(text, top_start(text), top_end(text), "connections", {cid: entry}, depth=1))
    if "folders" in members:
        _, vstart, vend = members["folders"]
        if FOLDER not in dict((k, 0) for k, *_ in _object_members(text, vstart)):
            edits.append(_set_member(text, vstart, vend, FOLDER, {}, depth=2))
    else:
        start = top_start(text)
        sep = "," if top else ""
        edits.append((start + 1, start + 1, f"\n\t\"folders\": {gson_dumps({FOLDER: {}}, level=1)}{sep}"))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def top_start(text: str) -> int:
    return _skip_ws(text, 0)


def top_end(text: str) -> int:
    return _skip_value(text, top_start(text))


def _set_member(text: str, obj_start: int, obj_end: int, key: str, value: Any, *, depth: int) -> tuple[int, int, str]:
    """Replace member `key` of the object text[obj_start:obj_end] in place, or append it."""
    members = _object_members(text, obj_start)
    serialized = gson_dumps(value, level=depth)
    for name, _kstart, vstart, vend in members:
        if name == key:
            return vstart, vend, serialized
    pad = "\t" * depth
    member = f"{gson_dumps(key)}: {serialized}"
    if members:
        last_end = members[-1][3]
        return last_end, last_end, f",\n{pad}{member}"
    # An empty object: lay it out as Gson would.
    return obj_start, obj_end, f"{{\n{pad}{member}\n{chr(9) * (depth - 1)}}}"


def _object_members(text: str, i: int) -> list[tuple[str, int, int, int]]:
    """(key, key start, value start, value end) of each member of the object starting at text[i]."""
    if text[i] != "{":
        raise DBeaverConfigError("data-sources.json: expected an object", next_step="fix or move the file, then rerun")
    out: list[tuple[str, int, int, int]] = []
    i = _skip_ws(text, i + 1)
    if text[i] == "}":
        return out
    while True:
        kstart = i
        kend = _skip_value(text, i)
        key = json.loads(text[kstart:kend])
        i = _skip_ws(text, kend)
        i = _skip_ws(text, i + 1)  # the colon
        vstart = i
        vend = _skip_value(text, i)
        out.append((key, kstart, vstart, vend))
        i = _skip_ws(text, vend)
        if text[i] == "}":
            return out
        i = _skip_ws(text, i + 1)  # the comma


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _skip_value(text: str, i: int) -> int:
    """Index just past the JSON value starting at text[i] (the text is known to be valid JSON)."""
    ch = text[i]
    if ch == '"':
        i += 1
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1
    if ch in "{[":
        depth = 0
        while True:
            c = text[i]
            if c == '"':
                i = _skip_value(text, i)
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
    while i < len(text) and text[i] not in ",}] \t\r\n":
        i += 1
    return i


def configure(cfg: EnvConfig, *, workspace: Path | None = None, dry_run: bool = False, port: int | None = None,
              start_tunnel: bool = False) -> DBeaverResult:
    """`invoke dbeaver`: the user name from the database secret (the password is not kept), then merge."""
    from ops.aws import check_account
    from ops.secrets import database_credentials

    check_account(cfg)
    from ops.identity_tunnel import choose_target, resolve_caller

    if choose_target(cfg, raw=False) == "postgres-auth":
        return write_config(cfg, user=resolve_caller(cfg).db_user, workspace=workspace, dry_run=dry_run, port=port,
                            start_tunnel=start_tunnel, proxy=True)
    creds = database_credentials(cfg)
    return write_config(cfg, user=creds.username, workspace=workspace, dry_run=dry_run, port=port,
                        start_tunnel=start_tunnel)


def describe(cfg: EnvConfig, result: DBeaverResult) -> str:
    if result.changed:
        lines = [f"DBeaver connection \"{result.entry['name']}\" written to {result.path}"]
        if result.changes and result.changes != ("added",):
            lines.append(f"  changed: {'; '.join(result.changes)}")
        if result.kept:
            lines.append(f"  kept your settings: {', '.join(result.kept)}")
        if result.backup:
            lines.append(f"  backup of the previous file: {result.backup}")
    else:
        lines = [f"DBeaver connection \"{result.entry['name']}\" already up to date in {result.path}"]
    conf = result.entry["configuration"]
    port = conf["port"]
    saved = ("no password: the auth proxy signs in" if result.entry.get("save-password")
             else "password not saved: DBeaver asks")
    lines.append(f"  localhost:{port}  database {conf['database']}  user {conf['user']}  type {conf['type']}  "
                 f"keep-alive {conf.get('keepAlive', '-')} s  folder {FOLDER}  ({saved})")
    if "BEFORE_CONNECT" in (conf.get("events") or {}):
        lines.append("next: connect in DBeaver; it starts the tunnel first (restart DBeaver if it was open)")
    else:
        lines.append(f"next: invoke tunnel --env {cfg.name} --local-port {port}   (keep it running), then connect "
                     "in DBeaver (restart DBeaver if it was open)")
    return "\n".join(lines)
