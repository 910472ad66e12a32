"""Alembic runs and the advisory lock against a real, password-only PostgreSQL (no tunnel here; the
sandbox tests run the same code through it): upgrade/downgrade, transactional failure, the lock,
exit statuses, and the password kept out of argv and output."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from ops.migrate import LOCK_KEY, MigrationLockedError, child_env, migration_lock, run_alembic
from ops.secrets import Credentials
from tests.db_fixtures import (
    FAILING_REVISION,
    PASSWORD,
    Postgres,
    copy_migrations,
    reset_schema,
    revision_file,
    tables,
)

pytest_plugins = ["tests.db_fixtures"]
pytestmark = pytest.mark.slow
INI = Path(__file__).resolve().parent.parent / "migrations" / "alembic.ini"


@pytest.fixture()
def pg(postgres: Postgres) -> Postgres:
    reset_schema(postgres)
    return postgres


def alembic(pg: Postgres, *args: str, ini: Path = INI, password: str = PASSWORD) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_alembic(ini, list(args), env=child_env(None, pg.params(), password), secrets=(PASSWORD,), stdout=out,
                       stderr=err)
    return code, out.getvalue(), err.getvalue()


def version(pg: Postgres) -> str:
    return pg.superuser_sql("SELECT version_num FROM alembic_version")


def indexes(pg: Postgres) -> set[str]:
    return set(pg.superuser_sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").split())


def test_upgrade_downgrade_upgrade(pg: Postgres) -> None:
    code, _, err = alembic(pg, "upgrade", "head")
    assert code == 0, err
    assert tables(pg) == {"alembic_version", "users", "orders"}
    assert "orders_user_created_idx" in indexes(pg) and version(pg) == "0003"
    pg.superuser_sql("INSERT INTO users (email, name) VALUES ('a@example.com', 'A')")
    code, _, err = alembic(pg, "downgrade", "-1")
    assert code == 0, err
    assert version(pg) == "0002" and "orders_user_created_idx" not in indexes(pg)
    code, _, err = alembic(pg, "upgrade", "head")
    assert code == 0, err
    assert version(pg) == "0003" and pg.superuser_sql("SELECT count(*) FROM users") == "1"


def test_a_failing_revision_changes_nothing_and_its_status_is_returned(pg: Postgres, tmp_path: Path) -> None:
    assert alembic(pg, "upgrade", "0002")[0] == 0
    ini = copy_migrations(tmp_path, extra={"0004_broken.py": FAILING_REVISION})
    before = (tables(pg), indexes(pg), version(pg))
    code, _, err = alembic(pg, "upgrade", "head", ini=ini)
    assert code == 1
    assert "division by zero" in err
    # 0003 ran and 0004 half ran inside the same transaction: all of it was rolled back.
    assert (tables(pg), indexes(pg), version(pg)) == before
    assert pg.superuser_sql("SELECT count(*) FROM information_schema.columns "
                            "WHERE table_name = 'users' AND column_name = 'nickname'") == "0"


def test_wrong_password_fails_without_showing_it(pg: Postgres) -> None:
    wrong = PASSWORD + "-wrong"
    out, err = io.StringIO(), io.StringIO()
    code = run_alembic(INI, ["upgrade", "head"], env=child_env(None, pg.params(), wrong), secrets=(wrong,),
                       stdout=out, stderr=err)
    assert code != 0
    text = out.getvalue() + err.getvalue()
    assert "password authentication failed" in text
    assert PASSWORD not in text and wrong not in text


def test_output_is_masked_even_if_a_revision_prints_the_url(pg: Postgres, tmp_path: Path) -> None:
    leaky = revision_file("0004", "0003", "    import os, sys\n    print(os.environ['DATABASE_URL'])\n"
                                          "    print(os.environ['DATABASE_URL'], file=sys.stderr)")
    ini = copy_migrations(tmp_path, extra={"0004_leaky.py": leaky})
    code, out, err = alembic(pg, "upgrade", "head", ini=ini)
    assert code == 0, err
    assert "postgresql://app_admin:***@127.0.0.1" in out and "***" in err
    assert PASSWORD not in out + err
    from urllib.parse import quote

    assert quote(PASSWORD, safe="") not in out + err


def test_the_lock_makes_a_second_runner_fail_at_once(pg: Postgres) -> None:
    params = pg.params()
    with migration_lock(params, PASSWORD, env="sandbox"):
        held = pg.superuser_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        assert held == "1"
        # Same process, lock held: a waiting runner would hang here for ever; ours fails.
        with pytest.raises(MigrationLockedError) as exc, migration_lock(params, PASSWORD, env="sandbox"):
            pass
        assert "another migration is running on sandbox" in exc.value.message
        assert "held by backend pid" in exc.value.message and "app_admin" in exc.value.message
    # Released: the next runner gets it.
    with migration_lock(params, PASSWORD, env="sandbox"):
        pass
    assert pg.superuser_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"


def test_the_lock_is_released_when_the_holder_dies(pg: Postgres) -> None:
    import psycopg

    conn = psycopg.connect(pg.params().conninfo(), password=PASSWORD, autocommit=True)
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    with pytest.raises(MigrationLockedError):
        with migration_lock(pg.params(), PASSWORD, env="sandbox"):
            pass
    conn.close()
    with migration_lock(pg.params(), PASSWORD, env="sandbox"):
        pass


def test_lock_connection_errors_are_one_line_without_the_password(pg: Postgres) -> None:
    from ops.errors import OpsError

    with pytest.raises(OpsError) as exc, migration_lock(pg.params(), PASSWORD + "x", env="sandbox"):
        pass
    assert "password authentication failed" in exc.value.message
    assert PASSWORD not in exc.value.message and "\n" not in exc.value.message


def test_ctrl_c_stops_the_alembic_child(pg: Postgres, tmp_path: Path) -> None:
    import os
    import signal

    slow = revision_file("0004", "0003", "    op.execute('SELECT pg_sleep(30)')")
    ini = copy_migrations(tmp_path, extra={"0004_slow.py": slow})
    started = threading.Event()

    def interrupt() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pg.superuser_sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'") == "1":
                started.set()
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        alembic(pg, "upgrade", "head", ini=ini)
    t.join()
    assert started.is_set()
    # The whole run was one transaction, interrupted: nothing of it is left.
    assert tables(pg) == set()
    assert pg.superuser_sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'") == "0"


def test_credentials_object_is_safe_to_log() -> None:
    assert PASSWORD not in repr(Credentials("app_admin", PASSWORD))
