"""Credentials from the RDS-managed secret, against moto's RDS and Secrets Manager over HTTP."""

from __future__ import annotations

import json

import pytest

from ops.secrets import SecretError, database_credentials, secret_arn
from tests.db_fixtures import set_database_secret
from tests.tunnel_fixtures import TunnelWorld

pytest_plugins = ["tests.tunnel_fixtures"]


pytestmark = pytest.mark.slow

SECRET = "s3cret-only-in-the-secret:@/"


def test_credentials_come_from_the_secret_rds_names(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sec-ok")
    arn = set_database_secret(tunnel_world, cfg, username="app_admin", password=SECRET)
    assert secret_arn(cfg) == arn
    creds = database_credentials(cfg)
    assert (creds.username, creds.password) == ("app_admin", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)


def test_a_rotated_password_is_picked_up_at_once(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sec-rotate")
    set_database_secret(tunnel_world, cfg, password="first")
    assert database_credentials(cfg).password == "first"
    set_database_secret(tunnel_world, cfg, password="second")
    assert database_credentials(cfg).password == "second"


@pytest.mark.parametrize("value", ["not json " + SECRET, json.dumps({"username": "u"}), json.dumps([SECRET])])
def test_a_malformed_secret_is_reported_without_its_content(tunnel_world: TunnelWorld, value: str) -> None:
    cfg = tunnel_world.add_env("sec-bad")
    arn = set_database_secret(tunnel_world, cfg)
    tunnel_world.client("secretsmanager").put_secret_value(SecretId=arn, SecretString=value)
    with pytest.raises(SecretError) as exc:
        database_credentials(cfg)
    assert SECRET not in exc.value.message and arn in exc.value.message
    assert "password" in exc.value.message or "JSON" in exc.value.message


def test_a_deleted_secret_names_the_next_step(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sec-gone")
    arn = set_database_secret(tunnel_world, cfg)
    tunnel_world.client("secretsmanager").delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    with pytest.raises(SecretError) as exc:
        database_credentials(cfg)
    assert "does not exist" in exc.value.message or "deleted" in exc.value.message
    assert "doctor" in exc.value.next_step


def test_a_database_without_a_managed_secret(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sec-none")
    tunnel_world.client("rds").modify_db_instance(DBInstanceIdentifier=cfg.stack_name, ManageMasterUserPassword=False,
                                           MasterUserPassword="x" * 12, ApplyImmediately=True)
    with pytest.raises(SecretError) as exc:
        database_credentials(cfg)
    assert "MasterUserSecret" in exc.value.message and "deploy" in exc.value.next_step
