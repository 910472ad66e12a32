"""DBeaver data-sources.json: merge into an existing file, idempotent rerun, backup, atomic write,
DBeaver's own layout (Gson), no password anywhere, default workspace per OS."""

from __future__ import annotations

import dataclasses
import difflib
import json
import shlex
from pathlib import Path

import pytest

from ops import dbeaver, dburl
from ops.config import load_env
from ops.dbeaver import DBeaverConfigError, connection_id, data_sources_path, default_workspace, write_config
from tests.conftest import plain_sandbox_env

# As DBeaver 24 writes it (Gson: tab indent, "=" as \u003d, no trailing newline), with folders,
# two connections of our own users, a network handler, connection types and a virtual model.
EXISTING = """{
\t"folders": {
\t\t"Customers": {},
\t\t"Customers/Old": {
\t\t\t"parent": "Customers",
\t\t\t"description": "archived \\u0026 read-only"
\t\t}
\t},
\t"connections": {
\t\t"postgres-jdbc-18c2b1b3a1e-6b1f0c2a9d4e7f11": {
\t\t\t"provider": "postgresql",
\t\t\t"driver": "postgres-jdbc",
\t\t\t"name": "local dev",
\t\t\t"save-password": true,
\t\t\t"folder": "Customers",
\t\t\t"configuration": {
\t\t\t\t"host": "localhost",
\t\t\t\t"port": "5432",
\t\t\t\t"database": "dev",
\t\t\t\t"url": "jdbc:postgresql://localhost:5432/dev?ssl\\u003dfalse",
\t\t\t\t"configurationType": "MANUAL",
\t\t\t\t"home": "postgresql-15",
\t\t\t\t"type": "dev",
\t\t\t\t"closeIdleConnection": true,
\t\t\t\t"provider-properties": {
\t\t\t\t\t"@dbeaver-show-non-default-db@": "true"
\t\t\t\t},
\t\t\t\t"auth-model": "native",
\t\t\t\t"handlers": {
\t\t\t\t\t"ssh_tunnel": {
\t\t\t\t\t\t"type": "TUNNEL",
\t\t\t\t\t\t"enabled": true,
\t\t\t\t\t\t"save-password": false,
\t\t\t\t\t\t"properties": {
\t\t\t\t\t\t\t"host": "jump.example.com",
\t\t\t\t\t\t\t"port": 22
\t\t\t\t\t\t}
\t\t\t\t\t}
\t\t\t\t}
\t\t\t}
\t\t},
\t\t"mysql8-18c2b1c0f00-1a2b3c4d5e6f7081": {
\t\t\t"provider": "mysql",
\t\t\t"driver": "mysql8",
\t\t\t"name": "Reporting \\u003c\\u003e",
\t\t\t"folder": "Customers/Old",
\t\t\t"configuration": {
\t\t\t\t"host": "reports.example.com",
\t\t\t\t"port": "3306",
\t\t\t\t"url": "jdbc:mysql://reports.example.com:3306/",
\t\t\t\t"configurationType": "MANUAL",
\t\t\t\t"type": "prod",
\t\t\t\t"auth-model": "native"
\t\t\t}
\t\t}
\t},
\t"virtual-models": {"postgres-jdbc-18c2b1b3a1e-6b1f0c2a9d4e7f11":{"dev":{"@properties":{"erd":"\\u003cd/\\u003e"}}}},
\t"connection-types": {
\t\t"dev": {
\t\t\t"name": "Development",
\t\t\t"color": "255,255,255",
\t\t\t"description": "Regular development database",
\t\t\t"auto-commit": true,
\t\t\t"confirm-execute": false,
\t\t\t"confirm-data-change": false,
\t\t\t"smart-commit": false,
\t\t\t"smart-commit-recover": true,
\t\t\t"auto-close-transactions": true,
\t\t\t"close-transactions-period": 1800,
\t\t\t"auto-close-connections": true,
\t\t\t"close-connections-period": 14400
\t\t}
\t}
}"""


@pytest.fixture(autouse=True)
def rds_bundle(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """prod.toml names certs/rds-global-bundle.pem, which a checkout may not carry (certs/README.md)."""
    root = tmp_path_factory.mktemp("project")
    (root / "certs").mkdir()
    bundle = root / "certs" / "rds-global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(dburl, "PROJECT_ROOT", root)
    return bundle


def workspace(tmp_path: Path, content: str | None = EXISTING) -> Path:
    ws = tmp_path / "workspace6"
    if content is not None:
        path = data_sources_path(ws)
        path.parent.mkdir(parents=True)
        path.write_text(content)
    return ws


def test_merge_keeps_everything_else_and_adds_our_connection(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    cfg = plain_sandbox_env()
    result = write_config(cfg, user="app_admin", workspace=ws)
    assert result.changed and result.path == ws / "General" / ".dbeaver" / "data-sources.json"
    doc = json.loads(result.path.read_text())
    before = json.loads(EXISTING)
    for key in before:
        if key not in ("folders", "connections"):
            assert doc[key] == before[key]
    assert {k: v for k, v in doc["folders"].items() if k != "bastionless"} == before["folders"]
    assert doc["folders"]["bastionless"] == {}
    others = {k: v for k, v in doc["connections"].items() if k != connection_id(cfg)}
    assert others == before["connections"]
    assert list(doc["connections"])[:2] == list(before["connections"])  # order kept, ours appended
    ours = doc["connections"]["postgres-jdbc-bastionless-sandbox"]
    assert ours["provider"] == "postgresql" and ours["driver"] == "postgres-jdbc"
    assert ours["folder"] == "bastionless" and ours["save-password"] is False
    conf = ours["configuration"]
    assert conf == {"host": "localhost", "port": "5433", "database": "app",
                    "url": "jdbc:postgresql://localhost:5433/app", "configurationType": "MANUAL",
                    "type": "dev", "keepAlive": 300, "closeIdleConnection": True, "user": "app_admin",
                    "auth-model": "native"}


def _only_insertions(before: str, after: str) -> list[str]:
    ops = difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes()
    assert all(tag in ("equal", "insert") for tag, *_ in ops), [op for op in ops if op[0] != "equal"]
    return [after[j1:j2] for tag, _i1, _i2, j1, j2 in ops if tag == "insert"]


def test_every_other_byte_is_kept(tmp_path: Path) -> None:
    # EXISTING has DBeaver's compact virtual-models line and \u escapes: none of it may change.
    ws = workspace(tmp_path)
    result = write_config(plain_sandbox_env(), user="app_admin", workspace=ws)
    text = result.path.read_text()
    _only_insertions(EXISTING, text)
    assert '\t\t"bastionless": {}\n\t},' in text and '\t\t"postgres-jdbc-bastionless-sandbox": {\n' in text
    # A second env and an update of the first change only our own parts too.
    write_config(load_env("prod"), user="app_admin", workspace=ws)
    moved = plain_sandbox_env()
    moved = dataclasses.replace(moved, tunnel=dataclasses.replace(moved.tunnel, local_port=7000))
    write_config(moved, user="app_admin", workspace=ws)
    final = result.path.read_text()
    for line in EXISTING.splitlines():
        assert line in final


def test_what_we_add_is_laid_out_like_dbeaver(tmp_path: Path) -> None:
    # From DBeaver's own layout, the merged file is exactly what DBeaver's writer would produce.
    canonical = dbeaver.gson_dumps(json.loads(EXISTING))
    ws = workspace(tmp_path, canonical)
    result = write_config(plain_sandbox_env(), user="app_admin", workspace=ws)
    text = result.path.read_text()
    assert text == dbeaver.gson_dumps(json.loads(text))
    assert "\\u003d" in text and "=" not in text and not text.endswith("\n")


def test_rerun_is_idempotent_and_updates_in_place(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    cfg = plain_sandbox_env()
    first = write_config(cfg, user="app_admin", workspace=ws)
    content = first.path.read_bytes()
    backups = sorted(first.path.parent.glob("*.bak"))
    again = write_config(cfg, user="app_admin", workspace=ws)
    assert not again.changed and again.backup is None
    assert first.path.read_bytes() == content
    assert sorted(first.path.parent.glob("*.bak")) == backups
    # A changed port updates the same connection: still one bastionless connection.
    moved = dataclasses.replace(cfg, tunnel=dataclasses.replace(cfg.tunnel, local_port=6543))
    write_config(moved, user="app_admin", workspace=ws)
    doc = json.loads(first.path.read_text())
    ours = [k for k in doc["connections"] if "bastionless" in k]
    assert ours == [connection_id(cfg)]
    assert doc["connections"][ours[0]]["configuration"]["port"] == "6543"
    assert list(doc["folders"]).count("bastionless") == 1


def test_backup_is_the_original_and_never_loaded_by_dbeaver(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    result = write_config(plain_sandbox_env(), user="app_admin", workspace=ws)
    assert result.backup is not None and result.backup.read_text() == EXISTING
    # DBeaver loads every data-sources*.json in .dbeaver/: nothing of ours may match.
    loaded = sorted(p.name for p in result.path.parent.iterdir()
                    if p.name.startswith("data-sources") and p.name.endswith(".json"))
    assert loaded == ["data-sources.json"]
    assert [p.name for p in result.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_new_workspace_gets_a_valid_file_without_backup(tmp_path: Path) -> None:
    ws = workspace(tmp_path, None)
    result = write_config(plain_sandbox_env(), user="app_admin", workspace=ws)
    assert result.backup is None
    doc = json.loads(result.path.read_text())
    assert list(doc) == ["folders", "connections"]
    assert doc["folders"] == {"bastionless": {}}


def test_no_password_anywhere(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    # The sandbox lists people: its entry is the auth proxy's, as `invoke dbeaver` writes it there.
    write_config(load_env("sandbox"), user="alice", workspace=ws, proxy=True)
    for env in ("staging", "prod"):
        write_config(load_env(env), user="app_admin", workspace=ws)
    doc = json.loads(data_sources_path(ws).read_text())
    ours = {k: v for k, v in doc["connections"].items() if "bastionless" in k}
    assert len(ours) == 3

    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    assert "password" not in keys(ours)
    # Master-user entries: DBeaver asks; the proxy's: an empty password counts as saved (nothing to ask for).
    assert {k.rsplit("-", 1)[-1]: c["save-password"] for k, c in ours.items()} == {
        "sandbox": True, "staging": False, "prod": False}
    assert not (ws / "General" / ".dbeaver" / "credentials-config.json").exists()


def test_prod_uses_the_production_type_and_verifies_tls(tmp_path: Path) -> None:
    bundle = tmp_path / "rds-global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    prod = load_env("prod")
    prod = dataclasses.replace(prod, database=dataclasses.replace(prod.database, ca_bundle=str(bundle)))
    entry = dbeaver.connection_entry(prod, user="app_admin")
    conf = entry["configuration"]
    assert conf["type"] == "prod"
    ssl = conf["handlers"]["postgre_ssl"]
    assert ssl["type"] == "CONFIG" and ssl["enabled"] is True
    # pgJDBC cannot check the RDS hostname through localhost: the chain is verified against the bundle.
    assert ssl["properties"]["sslMode"] == "verify-ca"
    assert ssl["properties"]["ssl.ca.cert"].endswith(prod.database.ca_bundle)
    staging = dbeaver.connection_entry(load_env("staging"), user="u")["configuration"]
    assert staging["type"] == "test" and staging["handlers"]["postgre_ssl"]["properties"] == {"sslMode": "require"}
    assert "handlers" not in dbeaver.connection_entry(plain_sandbox_env(), user="u")["configuration"]


def test_invalid_existing_file_is_left_alone(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "{ not json")
    with pytest.raises(DBeaverConfigError, match="not valid JSON"):
        write_config(plain_sandbox_env(), user="app_admin", workspace=ws)
    assert data_sources_path(ws).read_text() == "{ not json"
    assert list(data_sources_path(ws).parent.glob("*.bak")) == []


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    result = write_config(plain_sandbox_env(), user="app_admin", workspace=ws, dry_run=True)
    assert not result.changed and data_sources_path(ws).read_text() == EXISTING


def test_file_mode_is_kept(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    data_sources_path(ws).chmod(0o600)
    write_config(plain_sandbox_env(), user="app_admin", workspace=ws)
    assert data_sources_path(ws).stat().st_mode & 0o777 == 0o600


def test_default_workspace_per_os(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_workspace(system="Linux", home=home, environ={}) == \
        home / ".local/share/DBeaverData/workspace6"
    # DBeaver keeps using the legacy hidden folder when only that one exists (#6316).
    (home / ".local/share/.DBeaverData").mkdir(parents=True)
    assert default_workspace(system="Linux", home=home, environ={}) == \
        home / ".local/share/.DBeaverData/workspace6"
    assert default_workspace(system="Darwin", home=home, environ={}) == home / "Library/DBeaverData/workspace6"
    assert default_workspace(system="Windows", home=home, environ={"APPDATA": "C:/Users/x/AppData/Roaming"}) == \
        Path("C:/Users/x/AppData/Roaming") / "DBeaverData" / "workspace6"


def _edit_ours(path: Path, cfg_name: str, change: dict[str, object], conf_change: dict[str, object]) -> None:
    """What a user does in DBeaver's dialog: edit our entry (DBeaver rewrites the file)."""
    doc = json.loads(path.read_text())
    entry = doc["connections"][f"postgres-jdbc-bastionless-{cfg_name}"]
    entry.update(change)
    entry["configuration"].update(conf_change)
    path.write_text(dbeaver.gson_dumps(doc))


def test_rerun_keeps_the_users_edits_and_says_what_it_changed(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    cfg = load_env("staging")
    first = write_config(cfg, user="app_admin", workspace=ws)
    assert first.changes == ("added",)
    bootstrap = {"autocommit": False, "initQueries": ["set search_path to app"]}
    _edit_ours(first.path, "staging",
               {"navigator-show-only-entities": True, "name": "my staging"},
               {"color": "255,128,0", "bootstrap": bootstrap, "keepAlive": 120, "closeIdleConnection": False,
                "port": "9999", "type": "dev"})
    again = write_config(cfg, user="app_admin", workspace=ws, port=6000)
    entry = json.loads(again.path.read_text())["connections"][connection_id(cfg)]
    conf = entry["configuration"]
    # Kept: what the user set that does not conflict with what the tunnel needs.
    assert entry["navigator-show-only-entities"] is True
    assert conf["color"] == "255,128,0" and conf["bootstrap"] == bootstrap
    assert conf["keepAlive"] == 120, "a shorter keep-alive is still below the idle timeout"
    assert conf["closeIdleConnection"] is False
    # Ours again: the port of the tunnel, the staging connection type, our name.
    assert conf["port"] == "6000" and conf["url"] == "jdbc:postgresql://localhost:6000/app"
    assert conf["type"] == "test" and entry["name"] == "bastionless staging"
    assert "configuration.port: \"9999\" -> \"6000\"" in again.changes
    assert "configuration.type: \"dev\" -> \"test\"" in again.changes
    assert not any("color" in c or "bootstrap" in c for c in again.changes)
    assert {"navigator-show-only-entities", "configuration.color", "configuration.bootstrap",
            "configuration.keepAlive", "configuration.closeIdleConnection"} <= set(again.kept)
    text = dbeaver.describe(cfg, again)
    assert "changed: " in text and "kept your settings: " in text and "--local-port 6000" in text


def test_a_keep_alive_longer_than_the_idle_timeout_is_brought_below_it(tmp_path: Path) -> None:
    ws = workspace(tmp_path, content=None)
    cfg = plain_sandbox_env()
    first = write_config(cfg, user="u", workspace=ws)
    idle = cfg.session.idle_timeout_minutes * 60
    assert 0 < first.entry["configuration"]["keepAlive"] < idle
    _edit_ours(first.path, "sandbox", {}, {"keepAlive": idle + 60})
    again = write_config(cfg, user="u", workspace=ws)
    assert again.entry["configuration"]["keepAlive"] == dbeaver.keep_alive_seconds(cfg)
    short = dataclasses.replace(cfg, session=dataclasses.replace(cfg.session, idle_timeout_minutes=1))
    assert dbeaver.keep_alive_seconds(short) < 60


def test_start_tunnel_registers_the_before_connect_command(tmp_path: Path) -> None:
    ws = workspace(tmp_path, content=None)
    cfg = plain_sandbox_env()
    result = write_config(cfg, user="u", workspace=ws, port=6100, start_tunnel=True)
    event = json.loads(result.path.read_text())["connections"][connection_id(cfg)]["configuration"]["events"][
        "BEFORE_CONNECT"]
    assert event["enabled"] is True and event["wait-process"] is True
    argv = shlex.split(event["command"])
    assert argv[1:] == ["-m", "invoke", "tunnel", "--env", "sandbox", "--background", "--local-port", "6100",
                        "--reason", "DBeaver connect"]
    assert "connecting in DBeaver starts the tunnel" not in dbeaver.describe(cfg, result)
    assert "it starts the tunnel first" in dbeaver.describe(cfg, result)
    # A later run without --start-tunnel removes our hook (and only ours).
    again = write_config(cfg, user="u", workspace=ws, port=6100)
    assert "events" not in again.entry["configuration"]
