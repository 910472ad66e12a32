"""Fast tests: connection parameters per sslmode, URL escaping, pg_service.conf / .pgpass merging,
credentials hiding, confirmation, the alembic command line and status formatting."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ops import dburl, pgservice
from ops.config import PROJECT_ROOT, DatabaseConfig, EnvConfig, load_env
from ops.errors import AbortedError, ConfigError, ToolMissingError
from ops.migrate import MigrationStatus, Revision, alembic_argv, alembic_ini, confirm_action
from ops.psql import psql_argv, psql_binary
from ops.secrets import Credentials

PASSWORD = "p@ss:w/rd?#%&= 'q\"\\x"
RDS = "bastionless-prod.abc123.eu-west-1.rds.amazonaws.com"


def env_with(name: str = "sandbox", **db: object) -> EnvConfig:
    cfg = load_env(name)
    return dataclasses.replace(cfg, database=dataclasses.replace(cfg.database, **db))  # type: ignore[arg-type]


def test_verify_full_names_the_rds_host_and_dials_localhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative bundle path is relative to the project, wherever the command runs from.
    monkeypatch.setattr(dburl, "PROJECT_ROOT", tmp_path)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "global-bundle.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = env_with("prod", sslmode="verify-full", ca_bundle="certs/global-bundle.pem")
    p = dburl.for_tunnel(cfg, local_port=40001, db_host=RDS, db_name="app", user="app_admin")
    assert (p.host, p.hostaddr, p.port, p.sslmode) == (RDS, "127.0.0.1", 40001, "verify-full")
    assert p.sslrootcert == str(tmp_path / "certs/global-bundle.pem")
    info = psycopg.conninfo.conninfo_to_dict(p.conninfo())
    assert info == {"host": RDS, "hostaddr": "127.0.0.1", "port": "40001", "dbname": "app", "user": "app_admin",
                    "sslmode": "verify-full", "sslrootcert": p.sslrootcert}
    env = p.libpq_env()
    assert env["PGHOST"] == RDS and env["PGHOSTADDR"] == "127.0.0.1" and "PGPASSWORD" not in env


def test_a_missing_ca_bundle_names_the_file_and_how_to_get_it(tmp_path: Path) -> None:
    cfg = env_with("prod", sslmode="verify-full", ca_bundle=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError) as err:
        dburl.for_tunnel(cfg, local_port=40001, db_host=RDS)
    assert "nope.pem does not exist" in str(err.value) and "prod.toml" in str(err.value)
    assert dburl.RDS_GLOBAL_BUNDLE_URL in err.value.next_step


@pytest.mark.parametrize("mode", ["require", "verify-ca", "disable"])
def test_other_modes_connect_to_localhost(mode: str, tmp_path: Path) -> None:
    bundle = str(tmp_path / "rds.pem")
    Path(bundle).write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = env_with("sandbox", sslmode=mode, ca_bundle=bundle)
    p = dburl.for_tunnel(cfg, local_port=5433, db_host=RDS)
    assert (p.host, p.hostaddr, p.sslmode) == ("127.0.0.1", "", mode)
    assert p.sslrootcert == (bundle if mode == "verify-ca" else "")
    assert (p.dbname, p.user) == ("app", "app_admin")  # from the env when not given


def test_url_escapes_the_password_and_round_trips() -> None:
    p = dburl.ConnectionParams(host=RDS, hostaddr="127.0.0.1", port=5433, dbname="app", user="app admin",
                               sslmode="verify-full", sslrootcert="/certs/rds ca.pem")
    url = p.url(password=PASSWORD)
    assert PASSWORD not in url
    parsed = make_url(url)
    assert parsed.password == PASSWORD and parsed.username == "app admin" and parsed.host == RDS
    assert dict(parsed.query) == {"hostaddr": "127.0.0.1", "sslmode": "verify-full",
                                  "sslrootcert": "/certs/rds ca.pem"}
    assert psycopg.conninfo.conninfo_to_dict(url)["password"] == PASSWORD
    assert p.url().startswith("postgresql://app%20admin@") and ":" not in p.url().split("//")[1].split("@")[0]
    assert p.url(driver="psycopg").startswith("postgresql+psycopg://")


def test_conninfo_quotes_awkward_values() -> None:
    p = dburl.ConnectionParams(host="h", hostaddr="", port=1, dbname="my db", user="o'neil", sslmode="require")
    assert psycopg.conninfo.conninfo_to_dict(p.conninfo())["user"] == "o'neil"
    assert psycopg.conninfo.conninfo_to_dict(p.conninfo())["dbname"] == "my db"


def test_credentials_never_show_the_password() -> None:
    creds = Credentials(username="app_admin", password=PASSWORD)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert PASSWORD not in text and "app_admin" in text


def test_config_refuses_disable_outside_the_sandbox() -> None:
    cfg = load_env("staging")
    data = cfg.source.read_text()
    assert 'sslmode = "require"' in data
    bad = data.replace('sslmode = "require"', 'sslmode = "disable"')
    from ops.config import parse_env

    with pytest.raises(ConfigError, match="disable"):
        parse_env("staging", bad.encode(), cfg.source)


# ---- pg_service.conf and .pgpass --------------------------------------------------------------

def _params(**kw: object) -> dburl.ConnectionParams:
    base = dict(host=RDS, hostaddr="127.0.0.1", port=5433, dbname="app", user="app_admin", sslmode="verify-full",
                sslrootcert="/certs/rds.pem")
    base.update(kw)
    return dburl.ConnectionParams(**base)  # type: ignore[arg-type]


def test_pg_service_entry_is_added_and_replaced_keeping_the_rest(tmp_path: Path) -> None:
    cfg = load_env("prod")
    path = tmp_path / "pg_service.conf"
    other = "# mine\n[other]\nhost=db.example\nport=5432\n\n[bastionless-prod]\nhost=old\nport=1\n[last]\ndbname=x"
    path.write_text(other)
    pgservice.write_service(cfg, _params(), path=path)
    text = path.read_text()
    assert text.startswith("# mine\n[other]\nhost=db.example\nport=5432\n\n[bastionless-prod]\n")
    assert text.endswith("[last]\ndbname=x")
    assert "host=old" not in text and text.count("[bastionless-prod]") == 1
    assert f"host={RDS}\nhostaddr=127.0.0.1\nport=5433\ndbname=app\nuser=app_admin\nsslmode=verify-full\n" in text
    first = path.read_text()
    pgservice.write_service(cfg, _params(), path=path)
    assert path.read_text() == first  # idempotent
    pgservice.write_service(cfg, _params(port=6000), path=path)
    assert "port=6000" in path.read_text() and path.read_text().count("[bastionless-prod]") == 1


def test_pg_service_entry_in_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pg_service.conf"
    pgservice.write_service(load_env("sandbox"), _params(sslmode="disable", hostaddr="", host="127.0.0.1",
                                                          sslrootcert=""), path=path)
    assert path.read_text() == ("[bastionless-sandbox]\nhost=127.0.0.1\nport=5433\ndbname=app\nuser=app_admin\n"
                                "sslmode=disable\n")


def test_pgpass_line_is_escaped_replaced_and_0600(tmp_path: Path) -> None:
    path = tmp_path / ".pgpass"
    path.write_text("other:5432:*:bob:secret\n" + pgservice.pgpass_line(_params(), "old:pw"))
    path.chmod(0o644)
    pgservice.write_pgpass(_params(), PASSWORD, path=path)
    lines = path.read_text().splitlines()
    assert lines[0] == "other:5432:*:bob:secret"
    assert len(lines) == 2
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    assert lines[1] == f"{RDS}:5433:app:app_admin:{escaped}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new = tmp_path / "new.pgpass"
    pgservice.write_pgpass(_params(), PASSWORD, path=new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


def test_default_paths_follow_libpq(tmp_path: Path) -> None:
    assert pgservice.service_file({"PGSERVICEFILE": "/x/s.conf"}) == Path("/x/s.conf")
    assert pgservice.service_file({}) == Path.home() / ".pg_service.conf"
    assert pgservice.pgpass_file({"PGPASSFILE": "/x/p"}) == Path("/x/p")


# ---- migrate helpers ---------------------------------------------------------------------------

def test_alembic_runs_through_the_launcher_with_only_the_ini_in_argv() -> None:
    ini = alembic_ini(load_env("sandbox"))
    assert ini == PROJECT_ROOT / "migrations" / "alembic.ini"
    argv = alembic_argv("python3", ini, "upgrade", "head")
    assert argv[2:] == ["run", "-c", str(ini), "upgrade", "head"]


def test_missing_alembic_project_names_the_setting() -> None:
    cfg = load_env("sandbox")
    cfg = dataclasses.replace(cfg, migrations=dataclasses.replace(cfg.migrations, alembic_ini="nope/alembic.ini"))
    with pytest.raises(ConfigError, match=r"\[migrations\] alembic_ini"):
        alembic_ini(cfg)


def test_prod_needs_the_env_name_typed_or_yes() -> None:
    prod = load_env("prod")
    confirm_action(prod, "alembic upgrade head", yes=True, needed=True, ask=lambda _: "no")
    confirm_action(prod, "alembic upgrade head", yes=False, needed=True, ask=lambda _: "prod")
    with pytest.raises(AbortedError, match="not confirmed"):
        confirm_action(prod, "alembic upgrade head", yes=False, needed=True, ask=lambda _: "y")
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return ""

    confirm_action(load_env("sandbox"), "x", yes=False, needed=False, ask=ask)
    assert not asked


def test_confirmation_without_a_terminal_says_use_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(AbortedError) as exc:
        confirm_action(load_env("prod"), "alembic downgrade -1", yes=False, needed=True)
    assert "--yes" in exc.value.next_step


def test_status_marks_current_and_pending() -> None:
    history = (Revision("0003", "0002", "index", True), Revision("0002", "0001", "orders", False),
               Revision("0001", "", "users", False))
    text = MigrationStatus(env="sandbox", alembic_ini="migrations/alembic.ini", current=("0002",), heads=("0003",),
                           history=history, pending=("0003",)).format()
    assert "current: 0002" in text and "head:    0003" in text
    assert "  * 0002  orders  (current)" in text
    assert "    0003  index  (pending)" in text
    assert "pending: 1 (0003); apply with: invoke migrate --env sandbox" in text


def test_psql_argv_has_no_connection_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert psql_argv("/usr/bin/psql", command="select 1") == ["/usr/bin/psql", "--set", "ON_ERROR_STOP=1",
                                                              "--command", "select 1"]
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("BASTIONLESS_PSQL", raising=False)
    with pytest.raises(ToolMissingError) as exc:
        psql_binary()
    assert "postgresql-client" in exc.value.next_step


def test_database_defaults_unchanged() -> None:
    assert DatabaseConfig().sslmode == "verify-full"


def test_alembic_child_env_carries_the_url_and_drops_stray_libpq_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.migrate import child_env

    monkeypatch.setenv("PGHOSTADDR", "10.9.9.9")
    monkeypatch.setenv("PGSERVICE", "elsewhere")
    params = dburl.ConnectionParams(host="127.0.0.1", hostaddr="", port=1, dbname="app", user="u", sslmode="disable")
    env = child_env(None, params, "p")
    assert env["DATABASE_URL"] == "postgresql://u:p@127.0.0.1:1/app"
    assert "PGHOSTADDR" not in env and "PGSERVICE" not in env and "PATH" in env
