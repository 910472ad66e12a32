"""`invoke db-access`: make the database's roles match `[[people]]` of the env file.

The plan is computed from what the database has (`read_roles`) and what the file says (`plan`, pure);
it is shown, then applied in one transaction. Running it twice changes nothing the second time.

- group roles (NOLOGIN): readonly (pg_read_all_data), readwrite (+ pg_write_all_data), migrator
  (readwrite + CREATE on the database and schema public), owner (migrator + pg_signal_backend);
- each person: a LOGIN role named by their db_user, `GRANT rds_iam` (RDS then accepts only IAM tokens
  for it), their group and no other group, and a comment naming their AWS identity (our mark);
- a role that carries our mark but is no longer in the file loses LOGIN and its groups, and its open
  sessions are terminated. Its objects and the role itself stay (ownership is a human decision).

Changing roles needs CREATEROLE: this runs as the master user, i.e. break-glass on a real env.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ops.config import EnvConfig
from ops.people import DB_ROLES, IAM_ROLE, Person

Confirm = Callable[[str], str]

MARK = "bastionless person: "
GROUP_MEMBERSHIPS: dict[str, tuple[str, ...]] = {
    "readonly": ("pg_read_all_data",),
    "readwrite": ("pg_read_all_data", "pg_write_all_data"),
    "migrator": ("readwrite",),
    "owner": ("migrator", "pg_signal_backend"),
}
ROLES_QUERY = """
select r.rolname, r.rolcanlogin,
       coalesce(array(select g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid
                      where m.member = r.oid order by 1), '{}'),
       coalesce(shobj_description(r.oid, 'pg_authid'), '')
from pg_roles r
"""


@dataclass(frozen=True)
class RoleState:
    name: str
    can_login: bool
    member_of: frozenset[str] = frozenset()
    comment: str = ""


@dataclass(frozen=True)
class Change:
    summary: str
    statements: tuple[str, ...]
    # Run after the transaction commits (terminating sessions must see the role already without LOGIN).
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not self.changes

    def format(self, env: str) -> str:
        if self.empty:
            return f"{env}: database roles already match envs/{env}.toml; nothing to do"
        return "\n".join([f"{env}: {len(self.changes)} change(s):", *(f"  {c.summary}" for c in self.changes)])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan(people: Sequence[Person], roles: dict[str, RoleState], *, database: str) -> Plan:
    changes: list[Change] = []
    if IAM_ROLE not in roles:
        # RDS has it built in; the sandbox's PostgreSQL does not until we create it.
        changes.append(Change(f"create role {IAM_ROLE}", (f"create role {IAM_ROLE} nologin",)))
    for group in DB_ROLES:
        wanted = GROUP_MEMBERSHIPS[group]
        state = roles.get(group)
        if state is None:
            extra = ((f"grant create on database {_ident(database)} to {group}",
                      f"grant create on schema public to {group}") if group == "migrator" else ())
            changes.append(Change(f"create group role {group} ({', '.join(wanted)})",
                                  (f"create role {group} nologin", *(f"grant {m} to {group}" for m in wanted), *extra)))
            continue
        missing = [m for m in wanted if m not in state.member_of]
        if missing:
            changes.append(Change(f"group role {group}: grant {', '.join(missing)}",
                                  tuple(f"grant {m} to {group}" for m in missing)))
    wanted_users = {p.db_user for p in people}
    for person in people:
        changes += _person_changes(person, roles.get(person.db_user))
    for state in sorted(roles.values(), key=lambda r: r.name):
        if state.name in wanted_users or not state.comment.startswith(MARK):
            continue
        groups = sorted(g for g in state.member_of if g in DB_ROLES)
        if not state.can_login and not groups:
            continue
        who = state.comment.removeprefix(MARK)
        changes.append(Change(
            f"remove {state.name} ({who}): no LOGIN, no group, end their sessions",
            (f"alter role {_ident(state.name)} nologin",
             *(f"revoke {g} from {_ident(state.name)}" for g in groups)),
            # The name is a validated identifier, and _literal quotes it anyway.
            after=(f"select pg_terminate_backend(pid) from pg_stat_activity "  # noqa: S608
                   f"where usename = {_literal(state.name)}",)))
    return Plan(tuple(changes))


def _person_changes(person: Person, state: RoleState | None) -> list[Change]:
    user = _ident(person.db_user)
    comment = f"comment on role {user} is {_literal(MARK + person.identity)}"
    if state is None:
        return [Change(f"add {person.db_user} ({person.identity}) as {person.db_role}",
                       (f"create role {user} login", f"grant {IAM_ROLE} to {user}",
                        f"grant {person.db_role} to {user}", comment))]
    statements: list[str] = []
    notes: list[str] = []
    if not state.can_login:
        statements.append(f"alter role {user} login")
        notes.append("LOGIN")
    if IAM_ROLE not in state.member_of:
        statements.append(f"grant {IAM_ROLE} to {user}")
        notes.append(IAM_ROLE)
    if person.db_role not in state.member_of:
        statements.append(f"grant {person.db_role} to {user}")
        notes.append(person.db_role)
    for other in sorted(state.member_of & set(DB_ROLES) - {person.db_role}):
        statements.append(f"revoke {other} from {user}")
        notes.append(f"not {other}")
    if state.comment != MARK + person.identity:
        statements.append(comment)
        notes.append("mark")
    if not statements:
        return []
    return [Change(f"update {person.db_user} ({person.identity}): {', '.join(notes)}", tuple(statements))]


def read_roles(execute: Callable[[str], list[tuple[Any, ...]]]) -> dict[str, RoleState]:
    rows = execute(ROLES_QUERY)
    return {str(r[0]): RoleState(name=str(r[0]), can_login=bool(r[1]), member_of=frozenset(map(str, r[2] or ())),
                                 comment=str(r[3] or "")) for r in rows}


def apply(conn: Any, the_plan: Plan) -> None:
    """All role changes in one transaction; session terminations after it commits. `conn`: psycopg."""
    with conn.transaction():
        for change in the_plan.changes:
            for statement in change.statements:
                conn.execute(statement.encode())
    for change in the_plan.changes:
        for statement in change.after:
            conn.execute(statement.encode())


def db_access(cfg: EnvConfig, *, apply_changes: bool = True, yes: bool = False, ask: Confirm | None = None,
              transport: str = "auto", reason: str = "", report: Callable[[str], None] = print) -> Plan:
    """Show the difference between the database's roles and `[[people]]`; with `apply_changes`, ask
    (unless `yes`), then apply it. Runs as the master user (break-glass role) through an ephemeral tunnel."""
    import psycopg

    from ops.dbtunnel import through_tunnel
    from ops.identity_tunnel import break_glass_notice
    from ops.migrate import confirm_action

    # Changing roles needs the master user, whose secret only the break-glass role reads.
    report(break_glass_notice(cfg, "db-access"))
    with through_tunnel(cfg, reason=reason or "bastionless db-access: roles from the env file", transport=transport,
                        report=report, break_glass=True) as conn, \
            psycopg.connect(conn.params.conninfo(), password=conn.credentials.password, autocommit=True,
                            application_name="bastionless db-access") as db:
        the_plan = plan(cfg.people, read_roles(lambda sql: db.execute(sql.encode()).fetchall()),
                        database=cfg.database.name)
        report(the_plan.format(cfg.name))
        for change in the_plan.changes:
            for statement in (*change.statements, *change.after):
                report(f"    {statement}")
        if the_plan.empty or not apply_changes:
            return the_plan
        confirm_action(cfg, f"db-access: {len(the_plan.changes)} role change(s)", yes=yes, needed=True, ask=ask)
        apply(db, the_plan)
        report(f"{cfg.name}: applied {len(the_plan.changes)} change(s)")
    return the_plan
