"""Database credentials from Secrets Manager, fetched at run time and never written anywhere.

RDS manages the master password itself (`manage_master_user_password`): the secret's ARN is on the
instance (`MasterUserSecret.SecretArn`), its value is JSON with `username` and `password`. Nothing
of it is cached: a rotated password is picked up by the next command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import botocore.exceptions

from ops import aws
from ops.config import EnvConfig
from ops.discovery import aws_call, find_database
from ops.errors import OpsError


class SecretError(OpsError):
    """The database secret is missing, unreadable or not the JSON RDS writes."""


@dataclass(frozen=True)
class Credentials:
    username: str
    # repr=False keeps the password out of tracebacks, logs and `print(creds)`.
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.username} (password hidden)"


def secret_arn(cfg: EnvConfig) -> str:
    """The ARN of the RDS-managed master secret of the environment's database."""
    db = find_database(cfg)
    if not db.secret_arn:
        raise SecretError(
            f"database {db.identifier} has no RDS-managed master secret (MasterUserSecret is empty)",
            next_step=f"set manage_master_user_password on the instance: invoke deploy --env {cfg.name}")
    return db.secret_arn


def database_credentials(cfg: EnvConfig, *, arn: str = "") -> Credentials:
    """Username and password from the database's secret (ARN from RDS unless given)."""
    arn = arn or secret_arn(cfg)
    sm = aws_call(cfg, "the Secrets Manager client", lambda: aws.client(cfg, "secretsmanager"))
    try:
        value = aws_call(cfg, f"secretsmanager:GetSecretValue on {arn}", lambda: sm.get_secret_value(SecretId=arn),
                         passthrough=("ResourceNotFoundException",))
    except botocore.exceptions.ClientError:  # only the passthrough code arrives here
        raise SecretError(f"the database secret {arn} does not exist (deleted, or another account/region)",
                          next_step=f"invoke doctor --env {cfg.name}") from None
    raw = value.get("SecretString")
    if not isinstance(raw, str):
        raise SecretError(f"the database secret {arn} has no SecretString",
                          next_step="RDS-managed secrets are JSON strings; check the secret in the console")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        # The decoder's message can quote the secret: never pass it on.
        raise SecretError(f"the database secret {arn} is not JSON",
                          next_step="RDS writes {\"username\": ..., \"password\": ...}; restore that shape") from None
    if not isinstance(data, dict) or not isinstance(data.get("password"), str) or not data["password"]:
        raise SecretError(f"the database secret {arn} has no \"password\" field",
                          next_step="RDS writes {\"username\": ..., \"password\": ...}; restore that shape")
    username = data.get("username")
    if not isinstance(username, str) or not username:
        username = cfg.database.username
    return Credentials(username=username, password=data["password"])
