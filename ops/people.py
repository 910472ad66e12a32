"""Who gets into an environment's database, and as what: the `[[people]]` tables of `envs/<name>.toml`.

    [[people]]
    identity = "alice@example.com"   # the AWS user name: IAM user name, or the Identity Center user name
    db_role = "readwrite"            # readonly | readwrite | migrator | owner
    # db_user = "alice"              # default: derived from identity

The mapping from an AWS identity to a DB user (see README, "Per-person database identities"):
the DB user is what this file says, and IAM enforces it with the principal tag `db_user` (ABAC), so
one policy statement serves 100 people and nobody can connect as someone else's DB user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ops.errors import ConfigError

DbRole = Literal["readonly", "readwrite", "migrator", "owner"]
DB_ROLES: tuple[str, ...] = get_args(DbRole)
IAM_ROLE = "rds_iam"
# Roles a person's DB user may never be called: ours, RDS's and PostgreSQL's.
RESERVED = frozenset({*DB_ROLES, IAM_ROLE, "postgres", "public", "rdsadmin", "rds_superuser", "rds_replication",
                      "rds_password"})
_IDENTITY_RE = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}$")  # IAM's own character set for user/session names
_DB_USER_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Person:
    identity: str
    db_role: DbRole
    db_user: str


def default_db_user(identity: str) -> str:
    """alice@example.com -> alice; Bob.Smith -> bob_smith. Lowercase, so no quoting is ever needed."""
    local = identity.split("@", 1)[0].lower()
    name = re.sub(r"[^a-z0-9_]", "_", local)
    return name if name[:1].isalpha() else f"u_{name}"


def parse_people(where: str, raw: Any, *, master_user: str) -> tuple[Person, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{where}: people must be a list of tables; write each person as [[people]] with "
                          f"identity = \"...\" and db_role = \"...\"")
    people: list[Person] = []
    seen_identity: set[str] = set()
    seen_user: set[str] = set()
    for index, item in enumerate(raw):
        at = f"people[{index}]"
        unknown = sorted(set(item) - {"identity", "db_role", "db_user"})
        if unknown:
            raise ConfigError(f"{where}: unknown field {at}.{unknown[0]}; allowed: db_role, db_user, identity")
        identity = item.get("identity")
        if not isinstance(identity, str) or not _IDENTITY_RE.match(identity):
            raise ConfigError(f"{where}: {at}.identity = {identity!r} is not an AWS user name; write the IAM user "
                              f"name or the Identity Center user name, e.g. \"alice@example.com\"")
        role = item.get("db_role")
        if role not in DB_ROLES:
            raise ConfigError(f"{where}: {at}.db_role = {role!r} is not allowed; use one of: "
                              f"{', '.join(map(repr, DB_ROLES))}")
        db_user = item.get("db_user", default_db_user(identity))
        if not isinstance(db_user, str) or not _DB_USER_RE.match(db_user):
            raise ConfigError(f"{where}: {at}.db_user = {db_user!r} is not a lowercase PostgreSQL identifier; "
                              f"start with a letter, then letters, digits or '_'")
        if db_user in RESERVED or db_user == master_user or db_user.startswith(("pg_", "rds")):
            raise ConfigError(f"{where}: {at}.db_user = {db_user!r} is reserved; set db_user to the person's own name")
        if identity.lower() in seen_identity:
            raise ConfigError(f"{where}: {at}.identity = {identity!r} is listed twice; keep one entry per person")
        if db_user in seen_user:
            raise ConfigError(f"{where}: {at}.db_user = {db_user!r} is used twice; give one of them its own db_user")
        seen_identity.add(identity.lower())
        seen_user.add(db_user)
        people.append(Person(identity=identity, db_role=role, db_user=db_user))
    return tuple(people)


def identity_of(arn: str) -> str:
    """The user name in a caller ARN: `user/<name>` for IAM users, the role session name for assumed roles
    (Identity Center puts the user name there)."""
    resource = arn.split(":", 5)[-1]
    if resource.startswith("user/"):
        return resource.rsplit("/", 1)[-1]
    if resource.startswith("assumed-role/"):
        parts = resource.split("/")
        return parts[2] if len(parts) >= 3 else ""
    return ""


def person_for(people: tuple[Person, ...], arn: str) -> Person | None:
    name = identity_of(arn).lower()
    return next((p for p in people if p.identity.lower() == name), None) if name else None
