"""The sandbox's people: one moto IAM user per `[[people]]` entry, tagged `db_user` (what the ABAC policy
keys on), with an access key. The keys are kept in `<state>/identities.json` (0600): the RDS front reads
it to check token signatures (as RDS asks IAM), and `BASTIONLESS_SANDBOX_PERSON=<identity>` makes the
sandbox sign tokens as that person (default: the first of `[[people]]`), so tests can show that alice is alice
and cannot be bob."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ops import aws
from ops.config import EnvConfig
from ops.errors import OpsError
from ops.facts import DB_USER_TAG
from ops.rdsauth import SigningKey

FILE = "identities.json"
PERSON_ENV = "BASTIONLESS_SANDBOX_PERSON"


def path() -> Path:
    return aws.state_dir() / FILE


def provision(cfg: EnvConfig) -> dict[str, dict[str, str]]:
    """Create (or reuse) each person's IAM user, tag and key in the emulator; returns the key file's content."""
    iam = aws.client(cfg, "iam")
    known = load()
    for person in cfg.people:
        if person.identity in known:
            continue
        try:
            iam.create_user(UserName=person.identity, Tags=[{"Key": DB_USER_TAG, "Value": person.db_user}])
        except iam.exceptions.EntityAlreadyExistsException:
            iam.tag_user(UserName=person.identity, Tags=[{"Key": DB_USER_TAG, "Value": person.db_user}])
        key = iam.create_access_key(UserName=person.identity)["AccessKey"]
        arn = iam.get_user(UserName=person.identity)["User"]["Arn"]
        known[person.identity] = {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"], "arn": arn,
                                  "db_user": person.db_user}
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(known, handle)
    return known


def load() -> dict[str, dict[str, str]]:
    try:
        data: Any = json.loads(path().read_text())
    except FileNotFoundError:
        return {}
    return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data.items()} if isinstance(data, dict) else {}


def signing_keys() -> dict[str, SigningKey]:
    """Access key id -> what the front needs to check a signature and the db_user tag."""
    return {v["key_id"]: SigningKey(secret=v["secret"], principal=v["arn"], db_user=v["db_user"])
            for v in load().values()}


def person_session(cfg: EnvConfig) -> aws.Session | None:
    """The AWS session of the sandbox person you are: BASTIONLESS_SANDBOX_PERSON, else the first of
    `[[people]]` (so `invoke psql --env sandbox` is somebody out of the box). Set to "" it is nobody:
    None, the shared sandbox engineer, who has no DB user."""
    chosen = PERSON_ENV in os.environ
    who = os.environ[PERSON_ENV] if chosen else (cfg.people[0].identity if cfg.people else "")
    if not who:
        return None
    entry = load().get(who)
    if entry is None:
        named = f"{PERSON_ENV}={who}" if chosen else f"{who} (the first of [[people]]: you, unless {PERSON_ENV} says)"
        raise OpsError(f"{named} is not a provisioned sandbox person",
                       next_step="add them to [[people]] of the sandbox env and rerun invoke sandbox up")
    return aws.new_session(region_name=cfg.region, aws_access_key_id=entry["key_id"],
                           aws_secret_access_key=entry["secret"])
