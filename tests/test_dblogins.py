"""Database logins per person from PostgreSQL's log lines, as RDS and the sandbox write them. Fast."""

from __future__ import annotations

from datetime import UTC, datetime

from ops.dblogins import format_table, parse

PEOPLE = {"alice": "alice@example.com", "bob": "bob@example.com"}
RDS_LINES = [
    "2026-12-01 07:00:01 UTC:10.40.4.12(40312):alice@app:[4242]:LOG:  connection authorized: user=alice "
    "database=app application_name=psql (bastionless: alice@example.com) SSL enabled (protocol=TLSv1.3, "
    "cipher=TLS_AES_256_GCM_SHA384, bits=256)",
    "2026-12-01 07:00:02 UTC:10.40.4.12(40314):bob@app:[4243]:FATAL:  PAM authentication failed for user \"bob\"",
    "2026-12-01 07:00:03 UTC:10.40.4.12(40316):app_admin@app:[4244]:LOG:  connection authorized: user=app_admin "
    "database=app application_name=bastionless db-access SSL enabled (protocol=TLSv1.3)",
    "2026-12-01 07:00:04 UTC::@:[377]:LOG:  checkpoint starting: time",
]
SANDBOX_LINES = [
    "2026-12-01 07:01:00.123 UTC [5150] LOG:  connection authorized: user=bob database=app "
    "application_name=pytest (bastionless: bob@example.com)",
    "2026-12-01 07:01:01.456 UTC [5151] FATAL:  role \"carol\" is not permitted to log in",
]


def test_rds_log_lines_become_logins_per_person() -> None:
    found = parse(RDS_LINES, people=PEOPLE)
    assert [(e.person, e.db_user, e.refused) for e in found] == [
        ("alice@example.com", "alice", ""),
        ("bob@example.com", "bob", 'PAM authentication failed for user "bob"'),
        ("", "app_admin", ""),
    ]
    assert found[0].time == datetime(2026, 12, 1, 7, 0, 1, tzinfo=UTC)
    assert found[0].application == "psql (bastionless: alice@example.com)"
    assert found[2].application == "bastionless db-access"


def test_sandbox_lines_and_people_missing_from_the_file() -> None:
    found = parse(SANDBOX_LINES, people={})
    # Not in [[people]] any more: the proxy's mark still names who it was.
    assert [(e.person, e.db_user, bool(e.refused)) for e in found] == [("bob@example.com", "bob", False),
                                                                       ("", "carol", True)]
    table = format_table(found)
    assert "bob@example.com" in table and "refused: role \"carol\" is not permitted to log in" in table
    assert format_table([]) == "database logins: none in this period"
