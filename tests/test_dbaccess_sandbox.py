"""db-access against a real PostgreSQL behind the sandbox's RDS front: the plan applies, a second run has
nothing to do, a new person logs in through the proxy with their group's rights, a removed person's open
session ends and their next login is refused with the fix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ops import dbaccess
from ops.people import Person
from tests.identity_support import DB, Bed, start_bed

pytestmark = pytest.mark.slow
NO_PASSFILE = "/nonexistent/bastionless-no-pgpass"


@pytest.fixture()
def dbaccess_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    bed = start_bed(tmp_path_factory.mktemp("dbaccess"))
    yield bed
    bed.close()


def run(dbaccess_bed: Bed, people: tuple[Person, ...]) -> dbaccess.Plan:
    with psycopg.connect(host=str(dbaccess_bed.cluster.root), port=dbaccess_bed.cluster.port, user="postgres",
                         dbname=DB,
                         autocommit=True) as conn:
        def execute(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql.encode()).fetchall()

        the_plan = dbaccess.plan(people, dbaccess.read_roles(execute), database=DB)
        dbaccess.apply(conn, the_plan)
    return the_plan


def connect(port: int) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=port, dbname=DB, user="x", passfile=NO_PASSFILE, autocommit=True)


def test_people_get_in_with_their_groups_rights_and_removed_people_are_shut_out(dbaccess_bed: Bed) -> None:
    dbaccess_bed.superuser_sql("create table notes (body text)")
    team = (Person("alice@example.com", "migrator", "alice"), Person("bob@example.com", "readwrite", "bob"),
            Person("erin@example.com", "readonly", "erin"))
    assert not run(dbaccess_bed, team).empty
    assert run(dbaccess_bed, team).empty, "a second run must change nothing"

    _, erin_port = dbaccess_bed.proxy("erin")
    with connect(erin_port) as erin:
        assert erin.execute("select current_user, count(*) from notes").fetchone() == ("erin", 0)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            erin.execute("insert into notes values ('erin was here')")

    _, bob_port = dbaccess_bed.proxy("bob")
    bob = connect(bob_port)
    bob.execute("insert into notes values ('bob was here')")

    reports: list[str] = []
    _, bob_again = dbaccess_bed.proxy("bob", reports=reports)
    the_plan = run(dbaccess_bed, team[:1] + team[2:])
    assert [c.summary for c in the_plan.changes] == [
        "remove bob (bob@example.com): no LOGIN, no group, end their sessions"]
    with pytest.raises(psycopg.OperationalError):
        bob.execute("select 1")  # terminated by db-access
    bob.close()
    with pytest.raises(psycopg.OperationalError, match=r"removed from envs/sandbox\.toml"):
        connect(bob_again)
    assert "next: ask an owner of sandbox to add you and run invoke db-access --env sandbox" in reports[-1]
