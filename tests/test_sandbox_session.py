"""The deployed sandbox (session fixture): what `sandbox up` leaves for the tunnel, database and ECS tasks."""

from __future__ import annotations

import io
import json
import re

import psycopg
import pytest

from ops import aws
from ops.facts import RELAY_HOSTS_FILE
from ops.sandbox import manager
from tests.sandbox_support import Sandbox, error_line, invoke, records_in
from tests.tiers import needs_tool

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


def test_every_component_is_healthy_and_the_stack_applied(sandbox: Sandbox) -> None:
    rows = {r.name: r for r in manager.status()}
    assert all(rows[n].health == "healthy" for n in ("moto", "ssm-endpoint", "postgres", "rds-front")), rows
    # The whole stack, alarms and patching included (the count grows with the stack; never a partial apply).
    applied = re.search(r": (\d+) resources", rows["stack"].detail)
    assert rows["stack"].health == "applied" and applied and int(applied.group(1)) >= 70, rows["stack"].detail
    assert "importing them" in sandbox.log, "the RDS instance was created through the API and imported"


def test_the_rds_secret_opens_the_database_through_the_rds_front_as_in_prod(sandbox: Sandbox) -> None:
    """The relay's route to the database is the RDS front: TLS verified against the RDS host name with the
    sandbox CA, and the master password (read as the break-glass role: the env lists people) works."""
    cfg = sandbox.cfg
    db = aws.client(cfg, "rds").describe_db_instances(DBInstanceIdentifier=cfg.stack_name)["DBInstances"][0]
    with aws.acting_as(aws.BREAK_GLASS):
        secret = aws.client(cfg, "secretsmanager").get_secret_value(SecretId=db["MasterUserSecret"]["SecretArn"])
    creds = json.loads(secret["SecretString"])
    assert creds["username"] == cfg.database.username and len(creds["password"]) >= 32
    assert creds["password"] != "P@55w0rd!", "moto's placeholder is replaced, as RDS generates one"
    hosts = json.loads((sandbox.state_dir / RELAY_HOSTS_FILE).read_text())
    host, port = hosts[f"{db['Endpoint']['Address']}:{db['Endpoint']['Port']}"].split(":")
    assert int(port) == {r.name: r for r in manager.status()}["rds-front"].port
    ca = sandbox.state_dir / "rds-front" / "rds-sandbox-ca.pem"
    with psycopg.connect(host=db["Endpoint"]["Address"], hostaddr=host, port=int(port), user=creds["username"],
                         password=creds["password"], dbname=cfg.database.name, sslmode="verify-full",
                         sslrootcert=str(ca), connect_timeout=5) as conn:
        assert conn.execute("select current_user").fetchone() == (cfg.database.username,)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):  # rds.force_ssl, as the stack sets it
        psycopg.connect(host=host, port=int(port), user=creds["username"], password=creds["password"],
                        dbname=cfg.database.name, sslmode="disable", connect_timeout=5)


@needs_tool("psql", "the psql client is not installed")
def test_each_person_is_themselves_in_the_sandbox_database_with_no_password(sandbox: Sandbox) -> None:
    """Issue 13's line, on the sandbox `up` builds (the fixture ran db-access): alice is alice, bob is bob, and
    the shared engineer, who is nobody in [[people]], is told how to get in."""
    assert "front" in json.loads((sandbox.state_dir / manager.STATE_FILE).read_text())
    for who, db_user in (("alice@example.com", "alice"), ("bob@example.com", "bob")):
        proc = invoke("psql", "--env", "sandbox", "-c", "select current_user", state=sandbox.state_dir,
                      BASTIONLESS_SANDBOX_PERSON=who, PGPASSWORD="", PGPASSFILE="/nonexistent")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[2] == db_user, proc.stdout
        assert "BREAK-GLASS" not in proc.stderr
    nobody = invoke("psql", "--env", "sandbox", "-c", "select 1", state=sandbox.state_dir,
                    BASTIONLESS_SANDBOX_PERSON="")
    line = error_line(nobody)
    assert "assumed-role/bastionless-sandbox-developer/engineer is not in [[people]]" in line, line
    assert "next: ask an owner of sandbox to add you and run invoke db-access --env sandbox" in line, line


def test_ecs_sample_task_is_served_by_the_endpoint(sandbox: Sandbox) -> None:
    cfg = sandbox.cfg
    ecs = aws.client(cfg, "ecs")
    service = ecs.describe_services(cluster=cfg.stack_name, services=[f"{cfg.stack_name}-sample"])["services"][0]
    assert service["enableExecuteCommand"] is True
    arns = ecs.list_tasks(cluster=cfg.stack_name)["taskArns"]
    assert len(arns) == 1
    task = ecs.describe_tasks(cluster=cfg.stack_name, tasks=arns)["tasks"][0]
    assert task["lastStatus"] == "RUNNING" and task["enableExecuteCommand"] is True
    assert task["containers"][0]["name"] == cfg.ecs.default_container
    assert task["taskDefinitionArn"] == service["taskDefinition"]


def test_warm_up_keeps_everything_and_skips_terraform(sandbox: Sandbox) -> None:
    before = records_in(sandbox.state_dir)
    out = io.StringIO()
    manager.up(env="sandbox", deploy=True, out=out)
    assert records_in(sandbox.state_dir) == before
    assert "already applied to this sandbox, inputs unchanged" in out.getvalue()
    assert "terraform" not in out.getvalue().lower(), "a warm `sandbox up` does not run terraform"
