"""Fast tests of `invoke migrate`'s decisions: which project and interpreter, what the alembic child's
environment carries, how a run is judged against the database, and the launcher's ConfigParser
escaping. No process, no network."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from ops import alembic_launcher
from ops.config import PROJECT_ROOT, EnvConfig, load_env, parse_env
from ops.dburl import ConnectionParams
from ops.errors import CommandFailedError, ConfigError
from ops.migrate import (
    HOST_MAP_ENV,
    Project,
    Revision,
    RunReport,
    WrongDatabaseError,
    _check,
    _pending,
    alembic_argv,
    alembic_project,
    child_env,
    find_venv,
)

# Printable ASCII except / @ " and space: what RDS may put in a generated password, and more.
RDS_PASSWORD = "Ab1!#$%&'()*+,-.:;<=>?[\\]^_`{|}~%25%(here)s%%"
RDS = "bastionless-prod.abc123.eu-west-1.rds.amazonaws.com"
TUNNEL = ConnectionParams(host="127.0.0.1", hostaddr="", port=40001, dbname="app", user="app_admin",
                          sslmode="require")
PROJECT = Project(ini=PROJECT_ROOT / "migrations" / "alembic.ini", source="--ini x")


def with_migrations(cfg: EnvConfig, **kw: object) -> EnvConfig:
    return dataclasses.replace(cfg, migrations=dataclasses.replace(cfg.migrations, **kw))  # type: ignore[arg-type]


def env_file(tmp_path: Path, extra: str) -> EnvConfig:
    path = tmp_path / "t.toml"
    path.write_text('account_id = "123456789012"\nregion = "us-east-1"\nsandbox = true\n'
                    '[state]\nbackend = "local"\n' + extra)
    return parse_env("t", path.read_bytes(), path)


# ---- configuration -------------------------------------------------------------------------------

def test_env_file_maps_variables_for_env_py_files_that_ignore_database_url(tmp_path: Path) -> None:
    cfg = env_file(tmp_path, '[migrations]\npython = "../app/.venv/bin/python"\nx_args = ["tenant={dbname}"]\n'
                             '[migrations.env]\nPOSTGRES_SERVER = "{host}"\nPOSTGRES_PASSWORD = "{password}"\n')
    assert cfg.migrations.env == (("POSTGRES_SERVER", "{host}"), ("POSTGRES_PASSWORD", "{password}"))
    assert cfg.migrations.x_args == ("tenant={dbname}",)
    assert cfg.migrations.python == "../app/.venv/bin/python"


@pytest.mark.parametrize(("extra", "fragment"), [
    ('[migrations.env]\nPOSTGRES_SERVER = "{hots}"\n', "migrations.env.POSTGRES_SERVER uses the unknown placeholder"),
    ('[migrations]\nx_args = ["pw={password}"]\n', "would put the password on a command line"),
    ('[migrations]\nx_args = ["db_url={url}"]\n', "would put the password on a command line"),
    ('[migrations.env]\nPOSTGRES_PORT = 5432\n', "migrations.env must be a table of strings"),
    ('[migrations]\nversion_table = "a; drop"\n', "migrations.version_table"),
])
def test_bad_migration_settings_name_the_field(tmp_path: Path, extra: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        env_file(tmp_path, extra)
    assert fragment in exc.value.message and "t.toml" in exc.value.message


# ---- project, interpreter ------------------------------------------------------------------------

def test_a_relative_ini_is_relative_to_where_the_user_typed_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "alembic.ini").write_text("[alembic]\n")
    monkeypatch.chdir(tmp_path)
    project = alembic_project(load_env("sandbox"), "svc/alembic.ini")
    assert project.ini == tmp_path / "svc" / "alembic.ini" and project.source == "--ini svc/alembic.ini"
    monkeypatch.chdir(tmp_path / "svc")
    with pytest.raises(ConfigError) as exc:
        alembic_project(load_env("sandbox"), "svc/alembic.ini")
    assert "from --ini svc/alembic.ini" in exc.value.message and "current directory" in exc.value.next_step


def test_the_env_file_ini_is_relative_to_the_project_and_errors_name_the_env_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_env("sandbox")
    assert alembic_project(cfg).ini == PROJECT_ROOT / "migrations" / "alembic.ini"
    with pytest.raises(ConfigError) as exc:
        alembic_project(with_migrations(cfg, alembic_ini="nope/alembic.ini"))
    assert "from [migrations] alembic_ini in envs/sandbox.toml" in exc.value.message


def test_the_project_venv_is_found_next_to_the_ini_or_above_but_not_past_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "backend" / "app").mkdir(parents=True)
    assert find_venv(repo / "backend" / "app") is None
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    assert find_venv(repo / "backend" / "app") is None  # outside the repository: not the project's
    (repo / "backend" / ".venv" / "bin").mkdir(parents=True)
    (repo / "backend" / ".venv" / "bin" / "python").touch()
    assert find_venv(repo / "backend" / "app") == repo / "backend" / ".venv" / "bin" / "python"


def test_argv_is_the_launcher_and_alembic_arguments_only() -> None:
    argv = alembic_argv("/p/.venv/bin/python", Path("/p/alembic.ini"), "upgrade", "head", x_args=["tenant=app"])
    assert argv[0] == "/p/.venv/bin/python" and argv[1].endswith("ops/alembic_launcher.py")
    assert argv[2:] == ["run", "-c", "/p/alembic.ini", "-x", "tenant=app", "upgrade", "head"]


# ---- the child's environment ---------------------------------------------------------------------

def test_child_env_database_url_pg_variables_and_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOSTADDR", "10.9.9.9")
    monkeypatch.setenv("PGSERVICE", "elsewhere")
    cfg = with_migrations(load_env("sandbox"), env=(("POSTGRES_SERVER", "{host}"), ("POSTGRES_PORT", "{port}"),
                                                   ("POSTGRES_PASSWORD", "{password}"), ("APP_DB", "{url}")))
    env = child_env(cfg, TUNNEL, RDS_PASSWORD, report_path="/tmp/r.jsonl")
    url = make_url(env["DATABASE_URL"])
    # Every part survives the percent-escaping, and no query string an async driver would choke on.
    assert (url.password, url.host, url.port, url.database, url.query) == (RDS_PASSWORD, "127.0.0.1", 40001, "app",
                                                                           {})
    assert env["PGHOST"] == "127.0.0.1" and env["PGPORT"] == "40001" and env["PGPASSWORD"] == RDS_PASSWORD
    assert env["PGSSLMODE"] == "require" and "PGHOSTADDR" not in env and "PGSERVICE" not in env
    assert env["POSTGRES_SERVER"] == "127.0.0.1" and env["POSTGRES_PORT"] == "40001"
    assert env["POSTGRES_PASSWORD"] == RDS_PASSWORD and env["APP_DB"] == env["DATABASE_URL"]
    assert env["BASTIONLESS_MIGRATE_REPORT"] == "/tmp/r.jsonl" and HOST_MAP_ENV not in env


def test_verify_full_dials_the_tunnel_for_libpq_and_for_python_resolvers() -> None:
    params = dataclasses.replace(TUNNEL, host=RDS, hostaddr="127.0.0.1", sslmode="verify-full",
                                 sslrootcert="/certs/global-bundle.pem")
    env = child_env(None, params, "pw")
    assert make_url(env["DATABASE_URL"]).host == RDS and "hostaddr" not in env["DATABASE_URL"]
    assert env["PGHOSTADDR"] == "127.0.0.1" and env["PGSSLROOTCERT"] == "/certs/global-bundle.pem"
    assert env[HOST_MAP_ENV] == f"{RDS}=127.0.0.1"


def test_offline_child_env_has_no_credentials_and_a_host_that_cannot_resolve() -> None:
    cfg = with_migrations(load_env("sandbox"), env=(("POSTGRES_SERVER", "{host}"), ("POSTGRES_PASSWORD", "{password}")))
    env = child_env(cfg, None, "")
    assert env["POSTGRES_SERVER"] == "offline.invalid" and env["POSTGRES_PASSWORD"] == ""
    assert "PGPASSWORD" not in env and "offline.invalid" in env["DATABASE_URL"]


# ---- ConfigParser: set_main_option with a real password ------------------------------------------

def test_the_launcher_escapes_lone_percent_signs_for_configparser() -> None:
    from urllib.parse import quote

    url = f"postgresql+psycopg://app_admin:{quote(RDS_PASSWORD, safe='')}@127.0.0.1:5432/app"
    parser = configparser.ConfigParser()
    parser.add_section("alembic")
    parser.set("alembic", "here", "/x")
    with pytest.raises(ValueError, match="interpolation"):
        parser.set("alembic", "sqlalchemy.url", url)
    parser.set("alembic", "sqlalchemy.url", alembic_launcher.escape_percent(url))
    assert make_url(parser.get("alembic", "sqlalchemy.url")).password == RDS_PASSWORD
    # Already escaped values and interpolations stay what their author meant.
    assert alembic_launcher.escape_percent("%%(here)s/a%%20b %(here)s c%41") == "%%(here)s/a%%20b %(here)s c%%41"


# ---- judging a run by the database ---------------------------------------------------------------

def report(*events: dict[str, object]) -> RunReport:
    return RunReport(events=[{"event": "env_py"}, *(dict(e) for e in events)])


SQLITE = {"event": "migrating", "url": "sqlite:///app.db", "dialect": "sqlite", "host": None, "port": None,
          "database": "app.db", "version_table": "alembic_version", "version_table_schema": None}
OURS = {"event": "migrating", "url": "postgresql+psycopg://app_admin:***@127.0.0.1:40001/app",
        "dialect": "postgresql", "host": "127.0.0.1", "port": 40001, "database": "app",
        "version_table": "alembic_version", "version_table_schema": None}


def judge(code: int, run: RunReport, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    _check(code, "upgrade", load_env("sandbox"), PROJECT, run, before=before, after=after, params=TUNNEL)


def test_success_elsewhere_is_an_error_naming_where_env_py_connected() -> None:
    with pytest.raises(WrongDatabaseError) as exc:
        judge(0, report(SQLITE, {"event": "finished", "heads": ["0003"]}, {"event": "exit", "phase": "finished"}),
              (), ())
    assert exc.value.returncode != 0
    assert exc.value.message == ("Alembic reported 0003 but sandbox's database through the tunnel is still at no "
                                 "revision (empty): your env.py does not use DATABASE_URL (it connected to "
                                 "sqlite:///app.db)")
    assert "[migrations.env]" in exc.value.next_step and "invoke --help migrate" in exc.value.next_step


def test_same_revision_on_another_database_is_still_refused() -> None:
    with pytest.raises(WrongDatabaseError, match="connected to sqlite"):
        judge(0, report(SQLITE, {"event": "finished", "heads": ["0003"]}), ("0003",), ("0003",))


def test_success_on_the_tunnel_passes_and_pg_variables_count_as_the_tunnel() -> None:
    judge(0, report(OURS, {"event": "finished", "heads": ["0003"]}), ("0002",), ("0003",))
    via_pg = {**OURS, "url": "postgresql+psycopg://", "host": None, "port": None, "database": None}
    judge(0, report(via_pg, {"event": "finished", "heads": ["0003"]}), ("0002",), ("0003",))


def test_env_py_that_never_runs_migrations_is_not_success() -> None:
    with pytest.raises(WrongDatabaseError, match="never ran migrations"):
        judge(0, report({"event": "start"}, {"event": "exit", "phase": "env"}), (), ())


def test_an_ini_error_is_not_blamed_on_env_py_or_a_revision() -> None:
    with pytest.raises(CommandFailedError) as exc:
        judge(255, RunReport(events=[{"event": "start"}, {"event": "exit", "phase": "env", "code": 255}]), (), ())
    assert "Alembic stopped before running env.py" in exc.value.message and "script_location" in exc.value.next_step


def test_an_import_or_settings_error_is_not_blamed_on_a_revision() -> None:
    with pytest.raises(CommandFailedError) as exc:
        judge(1, report({"event": "start"}, {"event": "exit", "phase": "env", "code": 1}), ("0001",), ("0001",))
    assert "before connecting to any database; nothing was applied" in exc.value.message
    assert "not a revision" in exc.value.next_step


def test_a_failed_single_transaction_run_applied_nothing() -> None:
    with pytest.raises(CommandFailedError) as exc:
        judge(1, report(OURS, {"event": "step", "upgrade": True, "up": ["0002"], "heads": ["0002"]},
                        {"event": "exit", "phase": "migrating", "code": 1}), ("0001",), ("0001",))
    assert "nothing of this run was applied (the database is still at 0001)" in exc.value.message


def test_transaction_per_migration_reports_which_revisions_landed() -> None:
    steps = [{"event": "step", "upgrade": True, "up": [r], "heads": [r]} for r in ("0002", "0003")]
    with pytest.raises(CommandFailedError) as exc:
        judge(1, report(OURS, *steps, {"event": "exit", "phase": "migrating", "code": 1}), ("0001",), ("0003",))
    assert "nothing of this run" not in exc.value.message
    assert "0002, 0003 landed and the database is now at 0003" in exc.value.message


def test_a_failure_on_another_database_says_the_tunnel_is_untouched() -> None:
    with pytest.raises(CommandFailedError) as exc:
        judge(1, report(SQLITE, {"event": "exit", "phase": "migrating", "code": 1}), (), ())
    assert "connected to sqlite:///app.db, not to the tunnel" in exc.value.message


def test_pending_follows_the_graph() -> None:
    history = (Revision("c", "b", "", True), Revision("b", "a", "", False), Revision("a", "", "", False))
    assert _pending(history, ("c",), ()) == ("a", "b", "c")
    assert _pending(history, ("c",), ("b",)) == ("c",)
    assert _pending(history, ("c",), ("c",)) == ()


def test_the_launcher_resolves_the_rds_name_to_the_tunnel_for_python_resolvers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import socket

    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)  # restored after the test
    monkeypatch.setenv(HOST_MAP_ENV, "bastionless-prod.abc.eu-west-1.rds.invalid=127.0.0.1")
    alembic_launcher._install_host_map()

    async def resolve() -> set[str]:
        infos = await asyncio.get_running_loop().getaddrinfo("bastionless-prod.abc.eu-west-1.rds.invalid", 5432)
        return {info[4][0] for info in infos}

    # asyncpg resolves through the event loop, which calls socket.getaddrinfo: the tunnel's address.
    assert asyncio.run(resolve()) == {"127.0.0.1"}
    assert {i[4][0] for i in socket.getaddrinfo("127.0.0.1", 1)} == {"127.0.0.1"}
