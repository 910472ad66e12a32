"""`invoke migrate` against Alembic projects written the way real projects write them
(tests/alembic_projects/), through the sandbox tunnel to a password-only PostgreSQL whose password is
full of punctuation (tests.db_fixtures.PASSWORD: `%`, `@`, `:`, `/`, `#`, `?`, quotes...).

What must hold: the tunnel's database is what gets migrated (checked with SQL, not by exit status),
an env.py that migrates some other database fails loudly, migrate-status reads the truth from the
database itself, and Alembic runs in the project's own interpreter.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import string
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ops.config import EnvConfig, load_env
from ops.errors import CommandFailedError
from ops.migrate import migrate, migration_status
from tests.db_fixtures import PASSWORD, Postgres, copy_migrations, reset_schema, set_database_secret, tables
from tests.tunnel_fixtures import TunnelWorld, run_cli

pytest_plugins = ["tests.db_fixtures"]
pytestmark = pytest.mark.slow

PROJECTS = Path(__file__).resolve().parent / "alembic_projects"
# What a FastAPI-template user writes in the env file for an env.py that reads POSTGRES_*.
POSTGRES_MAPPING = (("POSTGRES_SERVER", "{host}"), ("POSTGRES_PORT", "{port}"), ("POSTGRES_USER", "{user}"),
                    ("POSTGRES_PASSWORD", "{password}"), ("POSTGRES_DB", "{dbname}"))


# Every character RDS may put in a generated master password (printable ASCII but / @ " and space).
RDS_STYLE_PASSWORD = "Rds1" + "".join(c for c in string.punctuation if c not in '/@"') + "%41%%(here)s"


def set_password(projects_world: TunnelWorld, pg: Postgres, password: str) -> None:
    """The database login and the RDS-managed secret both change, as after a rotation."""
    import psycopg

    with psycopg.connect(host=str(pg.root), port=pg.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), b"app_admin", b"scram-sha-256").decode()
        conn.execute(f"ALTER ROLE app_admin PASSWORD '{verifier}'")
    set_database_secret(projects_world, load_env("sandbox"), password=password)


def project(tmp_path: Path, name: str) -> Path:
    """A fresh copy of tests/alembic_projects/<name>; returns its alembic.ini."""
    target = tmp_path / name
    shutil.copytree(PROJECTS / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.db", ".venv"))
    return target / "alembic.ini"


def sandbox(**migrations: object) -> EnvConfig:
    cfg = load_env("sandbox")
    return dataclasses.replace(cfg, migrations=dataclasses.replace(cfg.migrations, **migrations))  # type: ignore[arg-type]


def version(pg: Postgres) -> str:
    return pg.superuser_sql("SELECT string_agg(version_num, ',') FROM alembic_version")


def item_columns(pg: Postgres) -> set[str]:
    return set(pg.superuser_sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'item'")
               .split())


@pytest.fixture()
def projects_world(db_world: TunnelWorld, postgres: Postgres) -> TunnelWorld:
    reset_schema(postgres)
    return db_world


def test_postgres_settings_project_with_a_punctuation_password_through_set_main_option(
        projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    # env.py builds its URL from POSTGRES_* (percent-encoded password) and calls set_main_option.
    ini = project(tmp_path, "postgres_settings")
    cfg = sandbox(env=POSTGRES_MAPPING)
    before = migration_status(cfg, transport="native", ini=str(ini))
    assert before.current == () and before.pending == ("e2b1f0c9a7d4", "5c3d9a1b2e8f")
    lines: list[str] = []
    done = migrate(cfg, yes=True, transport="native", ini=str(ini), report=lines.append)
    assert "the database is at 5c3d9a1b2e8f (checked through the tunnel)" in done
    assert version(postgres) == "5c3d9a1b2e8f" and item_columns(postgres) == {"id", "title", "owner"}
    after = migration_status(cfg, transport="native", ini=str(ini))
    assert after.current == ("5c3d9a1b2e8f",) and after.pending == ()
    assert any(line.startswith("alembic runs with ") for line in lines)


def test_async_asyncpg_project_reads_database_url_and_migrates_the_tunnel(
        projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    ini = project(tmp_path, "async_settings")
    result = run_cli(projects_world, "migrate", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    assert result.returncode == 0, result.stderr
    assert "sandbox: migrated to head; the database is at a0002" in result.stdout
    assert {"accounts", "sessions"} <= tables(postgres) and version(postgres) == "a0002"
    status = run_cli(projects_world, "migrate-status", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    assert status.returncode == 0, status.stderr
    assert "current: a0002" in status.stdout and "pending: none" in status.stdout


def test_transaction_per_migration_failure_says_which_revisions_landed(
        projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    ini = project(tmp_path, "async_settings")
    (ini.parent / "migrations" / "versions" / "0003_broken.py").write_text(
        '"""broken"""\nfrom alembic import op\n\nrevision = "a0003"\ndown_revision = "a0002"\n'
        "branch_labels = None\ndepends_on = None\n\n\ndef upgrade() -> None:\n    op.execute('SELECT 1 / 0')\n\n\n"
        "def downgrade() -> None:\n    pass\n")
    with pytest.raises(CommandFailedError) as exc:
        migrate(sandbox(), yes=True, transport="native", ini=str(ini))
    assert "nothing of this run was applied" not in exc.value.message
    assert "a0001, a0002 landed and the database is now at a0002" in exc.value.message
    assert version(postgres) == "a0002"


def test_sqlite_project_that_ignores_every_variable_fails_and_status_tells_the_truth(
        projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    ini = project(tmp_path, "sqlite_only")
    args = ("migrate", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    for attempt in (1, 2):  # the second time the SQLite file is already "at head"
        result = run_cli(projects_world, *args)
        assert result.returncode != 0, result.stdout
        assert ("error: Alembic reported 9f1e2d3c4b5a but sandbox's database through the tunnel is still at no "
                "revision (empty): your env.py does not use DATABASE_URL (it connected to sqlite:///app.db)"
                in result.stderr), (attempt, result.stderr)
        assert "[migrations.env]" in result.stderr and "migrated to" not in result.stdout
        assert "Traceback" not in result.stderr
    assert (ini.parent / "app.db").is_file()  # where Alembic really went
    assert tables(postgres) == set()
    status = run_cli(projects_world, "migrate-status", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    assert status.returncode == 0, status.stderr
    assert "current: (empty database: no revision applied)" in status.stdout
    assert "pending: 1 (9f1e2d3c4b5a)" in status.stdout


def test_an_env_py_settings_error_is_not_blamed_on_a_revision(projects_world: TunnelWorld, tmp_path: Path) -> None:
    ini = project(tmp_path, "async_settings")
    settings = ini.parent / "settings.py"
    settings.write_text(settings.read_text().replace("    def __init__(self) -> None:\n",
                                                     "    def __init__(self) -> None:\n"
                                                     "        self.SECRET_KEY = os.environ['SECRET_KEY']\n"))
    result = run_cli(projects_world, "migrate", "--env", "sandbox", "--ini", str(ini), "--transport", "native")
    assert result.returncode == 1
    assert "KeyError: 'SECRET_KEY'" in result.stderr  # Alembic's (the child's) own output stays visible
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: alembic upgrade failed on sandbox") and "before connecting" in last
    assert "nothing was applied" in last and "not a revision" in last
    assert "ops/migrate.py" not in result.stderr and "cli/db.py" not in result.stderr


def test_a_broken_ini_is_one_line_not_a_traceback(projects_world: TunnelWorld, tmp_path: Path) -> None:
    ini = tmp_path / "broken" / "alembic.ini"
    ini.parent.mkdir()
    ini.write_text("[alembic]\nscript_location = nowhere\n")
    for task in ("migrate", "migrate-status"):
        result = run_cli(projects_world, task, "--env", "sandbox", "--ini", str(ini), "--transport", "native")
        assert result.returncode != 0, (task, result.stdout)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "; next: " in last, (task, result.stderr)
        assert "ops/migrate.py" not in result.stderr and "Traceback" not in result.stderr, (task, result.stderr)
        assert "script_location" in last, (task, last)


def test_sql_mode_refuses_an_env_py_that_connects_offline(tmp_path: Path) -> None:
    ini = project(tmp_path, "sqlite_only")
    env_py = ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        '    url = config.get_main_option("sqlalchemy.url")\n',
        '    url = config.get_main_option("sqlalchemy.url")\n'
        '    from sqlalchemy import create_engine, text\n'
        '    with create_engine(url).connect() as probe:\n'
        '        probe.execute(text("select 1"))\n'))
    with pytest.raises(CommandFailedError) as exc:
        migrate(load_env("sandbox"), sql=True, ini=str(ini))
    assert (f"connects to a database even in offline (--sql) mode: it tried sqlite:///{ini.parent / 'app.db'}"
            in exc.value.message)
    assert not (ini.parent / "app.db").exists()  # refused before SQLite could create its file


def test_sql_mode_works_with_a_mapped_project_and_touches_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ini = project(tmp_path, "postgres_settings")
    assert migrate(sandbox(env=POSTGRES_MAPPING), sql=True, ini=str(ini)) == ""


def _project_venv(root: Path) -> Path:
    """A .venv for the project whose site-packages has a module bastionless' venv lacks; Alembic and
    its drivers come from bastionless' site-packages through a .pth (no pip run, no network)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True, timeout=60)
    python = root / ".venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip())
    (site / "bastionless_shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "only_in_the_project_venv.py").write_text("import sys\nPREFIX = sys.prefix\n")
    return python


def test_a_project_migrates_with_its_own_venv(projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    assert importlib.util.find_spec("only_in_the_project_venv") is None
    root = tmp_path / "service"
    ini = copy_migrations(root)
    env_py = ini.parent / "env.py"
    env_py.write_text(env_py.read_text().replace("from alembic import context\n",
                                                 "from alembic import context\nimport only_in_the_project_venv\n"))
    python = _project_venv(root)
    lines: list[str] = []
    migrate(load_env("sandbox"), yes=True, transport="native", ini=str(ini), report=lines.append)
    assert {"users", "orders"} <= tables(postgres) and version(postgres) == "0003"
    said = next(line for line in lines if line.startswith("alembic runs with "))
    assert said.startswith(f"alembic runs with {python} (Python ") and f"the project's {root / '.venv'}" in said
    status = migration_status(load_env("sandbox"), transport="native", ini=str(ini))
    assert status.current == ("0003",) and str(python) in status.interpreter


def test_an_rds_style_password_survives_set_main_option_in_both_url_styles(
        projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    # async_settings: bastionless' DATABASE_URL goes through set_main_option; postgres_settings: the
    # project builds (and percent-escapes) its own URL from POSTGRES_PASSWORD, then set_main_option.
    set_password(projects_world, postgres, RDS_STYLE_PASSWORD)
    try:
        out = run_cli(projects_world, "migrate", "--env", "sandbox", "--ini", str(project(tmp_path, "async_settings")),
                      "--transport", "native")
        assert out.returncode == 0, out.stderr
        assert version(postgres) == "a0002"
        reset_schema(postgres)
        migrate(sandbox(env=POSTGRES_MAPPING), yes=True, transport="native",
                ini=str(project(tmp_path, "postgres_settings")))
        assert version(postgres) == "5c3d9a1b2e8f"
        assert RDS_STYLE_PASSWORD not in out.stdout + out.stderr
    finally:
        set_password(projects_world, postgres, PASSWORD)


def test_x_arguments_from_the_env_file_reach_env_py(projects_world: TunnelWorld, postgres: Postgres,
                                                    tmp_path: Path) -> None:
    ini = copy_migrations(tmp_path)
    env_py = ini.parent / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "config = context.config\n",
        "config = context.config\n"
        "if context.get_x_argument(as_dictionary=True) != {'tenant': 'app', 'port': os.environ['PGPORT']}:\n"
        "    raise SystemExit('env.py: unexpected -x arguments')\n"))
    migrate(sandbox(x_args=("tenant={dbname}", "port={port}")), yes=True, transport="native", ini=str(ini))
    assert version(postgres) == "0003"


def test_an_env_py_relying_on_libpq_pg_variables_alone_migrates_the_tunnel(
        projects_world: TunnelWorld, postgres: Postgres, tmp_path: Path) -> None:
    # `postgresql+psycopg://` with no host, user or password: libpq fills everything from PG*.
    ini = copy_migrations(tmp_path)
    env_py = ini.parent / "env.py"
    env_py.write_text(env_py.read_text().replace('    url = os.environ.get("DATABASE_URL", "")\n',
                                                 '    url = "postgresql+psycopg://"\n'))
    migrate(load_env("sandbox"), yes=True, transport="native", ini=str(ini))
    assert version(postgres) == "0003"
