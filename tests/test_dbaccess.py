"""`[[people]]` in the env file, the db-access plan (pure), and the proxy's pure helpers. Fast."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ops import authproxy, pgwire
from ops.config import parse_env
from ops.dbaccess import MARK, RoleState, plan
from ops.errors import ConfigError
from ops.people import Person, default_db_user, identity_of, person_for

TOP = b'account_id = "123456789012"\nregion = "us-east-1"\nsandbox = true\n'
STATE = b'[state]\nbackend = "local"\n'


def people_env(text: str) -> tuple[Person, ...]:
    return parse_env("sandbox", TOP + text.encode() + STATE, Path("envs/sandbox.toml")).people


def test_people_parse_with_derived_db_users() -> None:
    people = people_env('[[people]]\nidentity = "Alice.Smith@example.com"\ndb_role = "readwrite"\n'
                        '[[people]]\nidentity = "bob"\ndb_role = "owner"\ndb_user = "robert"\n')
    assert people == (Person("Alice.Smith@example.com", "readwrite", "alice_smith"), Person("bob", "owner", "robert"))
    assert people_env("") == ()


@pytest.mark.parametrize("text, message", [
    ('[[people]]\nidentity = "a@example.com"\ndb_role = "admin"\n', "people[0].db_role = 'admin' is not allowed"),
    ('[[people]]\nidentity = "a b"\ndb_role = "readonly"\n', "people[0].identity"),
    ('[[people]]\nidentity = "x"\ndb_role = "readonly"\ndb_user = "app_admin"\n', "reserved"),
    ('[[people]]\nidentity = "x"\ndb_role = "readonly"\ndb_user = "rds_iam"\n', "reserved"),
    ('[[people]]\nidentity = "x"\ndb_role = "readonly"\ndb_user = "Bad-Name"\n', "lowercase PostgreSQL identifier"),
    ('[[people]]\nidentity = "a@x.com"\ndb_role = "readonly"\n[[people]]\nidentity = "a@y.com"\ndb_role = "owner"\n',
     "'a' is used twice"),
    ('[[people]]\nidentity = "a"\ndb_role = "readonly"\nrole = "x"\n', "unknown field people[0].role"),
    ('people = "alice"\n', "people must be a list of tables"),
])
def test_people_errors_name_file_field_and_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        people_env(text)
    assert "envs/sandbox.toml" in str(caught.value) and message in str(caught.value)


def test_aws_identities_map_to_people_for_iam_users_and_identity_center() -> None:
    people = (Person("alice@example.com", "readonly", "alice"), Person("bob", "owner", "bob"))
    sso = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dev_0123abcd/Alice@Example.com"
    assert identity_of(sso) == "Alice@Example.com"
    assert person_for(people, sso) == people[0]
    assert person_for(people, "arn:aws:iam::123456789012:user/bob") == people[1]
    assert person_for(people, "arn:aws:iam::123456789012:user/mallory") is None
    assert person_for(people, "arn:aws:iam::123456789012:root") is None
    assert default_db_user("9lives@example.com") == "u_9lives"


PEOPLE = (Person("alice@example.com", "readwrite", "alice"), Person("bob@example.com", "owner", "bob"))
GROUPS = {
    "rds_iam": RoleState("rds_iam", False),
    "readonly": RoleState("readonly", False, frozenset({"pg_read_all_data"})),
    "readwrite": RoleState("readwrite", False, frozenset({"pg_read_all_data", "pg_write_all_data"})),
    "migrator": RoleState("migrator", False, frozenset({"readwrite"})),
    "owner": RoleState("owner", False, frozenset({"migrator", "pg_signal_backend"})),
}


def statements(roles: dict[str, RoleState], people: tuple[Person, ...] = PEOPLE) -> list[str]:
    return [s for c in plan(people, roles, database="app").changes for s in (*c.statements, *c.after)]


def test_a_fresh_database_gets_groups_then_people() -> None:
    sql = statements({})
    assert sql[0] == "create role rds_iam nologin"
    assert "grant pg_write_all_data to readwrite" in sql
    assert 'grant create on database "app" to migrator' in sql
    assert sql[-8:] == ['create role "alice" login', 'grant rds_iam to "alice"', 'grant readwrite to "alice"',
                        f"comment on role \"alice\" is '{MARK}alice@example.com'",
                        'create role "bob" login', 'grant rds_iam to "bob"', 'grant owner to "bob"',
                        f"comment on role \"bob\" is '{MARK}bob@example.com'"]


def test_a_database_that_matches_needs_nothing() -> None:
    roles = dict(GROUPS)
    for p in PEOPLE:
        roles[p.db_user] = RoleState(p.db_user, True, frozenset({"rds_iam", p.db_role}), MARK + p.identity)
    the_plan = plan(PEOPLE, roles, database="app")
    assert the_plan.empty
    assert "nothing to do" in the_plan.format("sandbox")


def test_a_role_change_revokes_the_old_group_and_a_returning_person_gets_login_back() -> None:
    roles = dict(GROUPS)
    roles["alice"] = RoleState("alice", False, frozenset({"rds_iam", "owner"}), MARK + "alice@example.com")
    roles["bob"] = RoleState("bob", True, frozenset({"rds_iam", "owner"}), MARK + "bob@example.com")
    assert statements(roles) == ['alter role "alice" login', 'grant readwrite to "alice"', 'revoke owner from "alice"']


def test_removed_people_lose_login_and_sessions_but_strangers_are_left_alone() -> None:
    roles = dict(GROUPS)
    roles["carol"] = RoleState("carol", True, frozenset({"rds_iam", "readonly"}), MARK + "carol@example.com")
    roles["app_admin"] = RoleState("app_admin", True, frozenset(), "")
    roles["svc"] = RoleState("svc", True, frozenset({"readonly"}), "an application's own role")
    the_plan = plan((), roles, database="app")
    assert [c.summary for c in the_plan.changes] == [
        "remove carol (carol@example.com): no LOGIN, no group, end their sessions"]
    assert statements(roles, ()) == [
        'alter role "carol" nologin', 'revoke readonly from "carol"',
        "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'carol'"]
    # Once removed, a second run has nothing left to do.
    roles["carol"] = RoleState("carol", False, frozenset({"rds_iam"}), MARK + "carol@example.com")
    assert plan((), roles, database="app").empty


def test_application_name_keeps_the_callers_mark_within_postgresqls_limit() -> None:
    assert authproxy.marked_application_name("psql", "alice@example.com") == "psql (bastionless: alice@example.com)"
    assert authproxy.marked_application_name("", "bob") == "client (bastionless: bob)"
    long = authproxy.marked_application_name("x" * 80, "alice@example.com")
    assert len(long.encode()) <= 63 and long.endswith("(bastionless: alice@example.com)")


@pytest.mark.skipif(sys.byteorder != "little", reason="fixture rows are from a little-endian machine")
def test_peer_uid_is_read_from_the_clients_row_of_proc_net_tcp() -> None:
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0100007F:1539 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1\n"
           "   1: 0100007F:1539 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2 1\n"
           "   2: 0100007F:D431 0100007F:1539 01 00000000:00000000 00:00000000 00000000  1001        0 3 1\n")
    tcp6 = ("  sl  local_address                         remote_address                        st tx_queue rx_queue "
            "tr tm->when retrnsmt   uid  timeout inode\n"
            "   0: 00000000000000000000000001000000:D432 00000000000000000000000001000000:1539 01 00000000:00000000 "
            "00:00000000 00000000  1002        0 4 1\n")
    assert authproxy.peer_uid([tcp, tcp6], peer=("127.0.0.1", 0xD431), local=("127.0.0.1", 0x1539)) == 1001
    assert authproxy.peer_uid([tcp, tcp6], peer=("::1", 0xD432), local=("::1", 0x1539)) == 1002
    assert authproxy.peer_uid([tcp], peer=("127.0.0.1", 1), local=("127.0.0.1", 0x1539)) is None


def test_startup_errors_are_explained_with_the_fix() -> None:
    def fields(code: str, message: str) -> pgwire.ErrorFields:
        return pgwire.ErrorFields({"C": code, "M": message, "S": "FATAL"})

    refused = authproxy.explain(fields("28P01", 'PAM authentication failed for user "bob"'), db_user="bob", env="prod")
    assert "RDS refused the IAM token" in refused.message and "invoke doctor --env prod" in refused.next_step
    removed = authproxy.explain(fields("28000", 'role "carol" is not permitted to log in'), db_user="carol",
                                env="prod")
    assert "removed from envs/prod.toml" in removed.message and "invoke db-access --env prod" in removed.next_step
    missing = authproxy.explain(fields("28000", 'role "zed" does not exist'), db_user="zed", env="prod")
    assert "does not exist" in missing.message and "db-access" in missing.next_step


def test_dbeaver_entry_for_the_auth_proxy_has_no_password_and_never_prompts(tmp_path: Path) -> None:
    import json

    from ops import dbeaver
    from ops.config import load_env

    cfg = load_env("prod")
    result = dbeaver.write_config(cfg, user="alice", workspace=tmp_path, proxy=True)
    text = dbeaver.data_sources_path(tmp_path).read_text()
    entry = json.loads(text)["connections"][dbeaver.connection_id(cfg)]
    assert entry["configuration"]["user"] == "alice"
    assert entry["configuration"]["url"] == f"jdbc:postgresql://localhost:{cfg.tunnel.local_port}/{cfg.database.name}"
    # Saved (empty) password: DBeaver does not prompt; nothing secret is written, no TLS on the local hop.
    assert entry["save-password"] is True
    assert "password" not in text.lower().replace("no password", "").replace('"save-password"', "")
    assert "handlers" not in entry["configuration"]
    assert result is not None


@pytest.mark.parametrize("with_people, status", [(True, "pass"), (False, "fail")])
def test_doctor_expects_developers_not_to_read_the_master_secret_where_people_log_in_as_themselves(
        with_people: bool, status: str) -> None:
    import botocore.exceptions

    from ops.doctor import _Doctor

    class DeniedSecrets:
        def get_secret_value(self, SecretId: str) -> None:
            raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                                                  "GetSecretValue")

    text = '[[people]]\nidentity = "alice@example.com"\ndb_role = "readonly"\n' if with_people else ""
    cfg = parse_env("sandbox", TOP + text.encode() + STATE, Path("envs/sandbox.toml"))
    doctor = _Doctor(cfg=cfg, _clients={"secretsmanager": DeniedSecrets()})
    doctor._secret({"MasterUserSecret": {"SecretArn": "arn:aws:secretsmanager:us-east-1:1:secret:x"},
                    "DBInstanceIdentifier": "x"})
    (result,) = doctor.results
    assert result.status == status
    assert ("break-glass" in result.detail) if with_people else ("break-glass role has both" in result.fix)
