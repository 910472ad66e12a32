"""Least privilege, proven in the sandbox: IAM is enforced there (ops.sandbox.moto_iam + endpoint_iam), developer
tasks run as the developer role, a task fails when one permission it needs is removed, and the env's port
document cannot be pointed anywhere but the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from ops import aws
from ops.iam_policies import port_document_name
from tests.sandbox_support import Sandbox, error_line, invoke

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


def emulator(box: Sandbox, service: str) -> Any:
    """The emulator's own key: arranging state as AWS itself would, never a task's identity."""
    return boto3.client(service, region_name=box.cfg.region, endpoint_url=box.moto_url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def developer(box: Sandbox, service: str) -> Any:
    aws.forget_assumed_roles()
    creds = aws.sandbox_credentials(box.cfg, "developer")
    url = box.endpoint_url if service in ("ssm", "ecs") else box.moto_url
    return boto3.client(service, region_name=box.cfg.region, endpoint_url=url, **creds)  # type: ignore[call-overload]


def active_sessions(box: Sandbox) -> list[dict[str, Any]]:
    ssm = boto3.client("ssm", region_name=box.cfg.region, endpoint_url=box.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    sessions: list[dict[str, Any]] = ssm.describe_sessions(State="Active")["Sessions"]
    return sessions


@pytest.fixture
def without_permission(sandbox: Sandbox) -> Iterator[Any]:
    """Remove one action from the developer role's policy for the test; the original policy comes back after."""
    iam = emulator(sandbox, "iam")
    role = aws.role_name(sandbox.cfg, "developer")
    original = iam.get_role_policy(RoleName=role, PolicyName="developer-access")["PolicyDocument"]
    original = json.loads(original) if isinstance(original, str) else original

    def remove(action: str) -> None:
        doc = json.loads(json.dumps(original))
        for stmt in doc["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            stmt["Action"] = [a for a in actions if a != action]
        doc["Statement"] = [s for s in doc["Statement"] if s["Action"]]
        iam.put_role_policy(RoleName=role, PolicyName="developer-access", PolicyDocument=json.dumps(doc))

    yield remove
    iam.put_role_policy(RoleName=role, PolicyName="developer-access", PolicyDocument=json.dumps(original))


def test_developer_tasks_run_as_the_developer_role_with_iam_enforced(sandbox: Sandbox) -> None:
    aws.forget_assumed_roles()
    ident = aws.caller_identity(sandbox.cfg)
    assert f":assumed-role/{aws.role_name(sandbox.cfg, 'developer')}/" in ident["Arn"]
    proc = invoke("psql", "--env", "sandbox", "-c", "select 42 as answer", state=sandbox.state_dir)
    assert proc.returncode == 0, proc.stderr
    assert "42" in proc.stdout
    proc = invoke("doctor", "--env", "sandbox", state=sandbox.state_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "assumed-role/bastionless-sandbox-developer" in proc.stdout and " 0 fail" in proc.stdout
    # A call outside the policy is refused by the emulator, as AWS would refuse it.
    with pytest.raises(botocore.exceptions.ClientError) as err:
        developer(sandbox, "ec2").stop_instances(InstanceIds=["i-00000000000000000"])
    assert err.value.response["Error"]["Code"] in ("AccessDenied", "UnauthorizedOperation", "UnknownError")
    assert not active_sessions(sandbox)


def test_a_task_fails_when_one_permission_it_needs_is_removed(sandbox: Sandbox, without_permission: Any) -> None:
    without_permission("ssm:StartSession")
    proc = invoke("psql", "--env", "sandbox", "-c", "select 1", state=sandbox.state_dir)
    assert proc.returncode != 0
    line = error_line(proc)
    assert "denied" in line and "next:" in line, line
    assert "Traceback" not in proc.stderr
    assert not active_sessions(sandbox)


def test_only_the_break_glass_role_reads_the_master_secret_and_it_takes_mfa(sandbox: Sandbox) -> None:
    """The sandbox lists people, so developers no longer read the master secret; `--break-glass` assumes the
    break-glass role, presenting the engineer's MFA device (its trust asks for it), and says so loudly."""
    from ops.secrets import database_credentials

    aws.forget_assumed_roles()
    arn = developer(sandbox, "rds").describe_db_instances(DBInstanceIdentifier=sandbox.cfg.stack_name)[
        "DBInstances"][0]["MasterUserSecret"]["SecretArn"]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        developer(sandbox, "secretsmanager").get_secret_value(SecretId=arn)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    with aws.acting_as(aws.BREAK_GLASS):
        assert database_credentials(sandbox.cfg).username == sandbox.cfg.database.username
        ident = aws.caller_identity(sandbox.cfg)
    assert f":assumed-role/{aws.role_name(sandbox.cfg, 'break-glass')}/" in ident["Arn"]
    proc = invoke("psql", "--env", "sandbox", "--break-glass", "-c", "select current_user", state=sandbox.state_dir)
    assert proc.returncode == 0, proc.stderr
    assert sandbox.cfg.database.username in proc.stdout and "*** BREAK-GLASS" in proc.stderr
    assert "bastionless-sandbox-break-glass" in proc.stderr


def test_break_glass_without_mfa_is_refused_in_one_line(sandbox: Sandbox) -> None:
    keys_file = sandbox.state_dir / aws.IDENTITIES_FILE
    original = keys_file.read_text()
    keys = json.loads(original)
    for field in ("mfa_serial", "mfa_seed"):
        keys["engineer"].pop(field)
    try:
        keys_file.write_text(json.dumps(keys))
        proc = invoke("psql", "--env", "sandbox", "--break-glass", "-c", "select 1", state=sandbox.state_dir)
    finally:
        keys_file.write_text(original)
    assert proc.returncode != 0
    line = error_line(proc)
    assert line.startswith("error: you may not assume the break-glass role arn:aws:iam::123456789012:role/"
                           "bastionless-sandbox-break-glass (AccessDenied)"), line
    assert "next: ask an owner of sandbox" in line
    assert not active_sessions(sandbox)


def test_the_env_port_document_cannot_be_pointed_elsewhere(sandbox: Sandbox) -> None:
    from ops.relay import current_relay

    relay = current_relay(sandbox.cfg).instance_id
    ssm = developer(sandbox, "ssm")
    document = port_document_name(sandbox.cfg.stack_name)
    for params in ({"host": ["169.254.169.254"], "portNumber": ["80"]},
                   {"host": ["10.40.8.9"], "portNumber": ["5432"], "localPortNumber": ["5433"]}):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ssm.start_session(Target=relay, DocumentName=document, Parameters=params)
        assert err.value.response["Error"]["Code"] == "InvalidParameters", err.value.response
    # The generic document would take any host: the developer role may not use it.
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.start_session(Target=relay, DocumentName="AWS-StartPortForwardingSessionToRemoteHost",
                          Parameters={"host": ["169.254.169.254"], "portNumber": ["80"]})
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "AWS-StartPortForwardingSessionToRemoteHost" in err.value.response["Error"]["Message"]
    # Nor a shell on the relay.
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.start_session(Target=relay)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    assert not active_sessions(sandbox)


def test_tunnel_host_is_refused_for_developers_with_its_reason(sandbox: Sandbox) -> None:
    proc = invoke("tunnel", "--env", "sandbox", "--host", "10.40.8.9:22", "--local-port", "0", state=sandbox.state_dir,
                  timeout=120)
    assert proc.returncode != 0
    line = error_line(proc)
    assert "--host needs the generic AWS-StartPortForwardingSessionToRemoteHost document" in line
    assert "next: invoke tunnel --env sandbox (without --host)" in line
    assert not active_sessions(sandbox)


def test_developer_cannot_end_someone_elses_session(sandbox: Sandbox) -> None:
    from ops.relay import current_relay

    deployer_keys = aws.sandbox_credentials(sandbox.cfg, "deployer")
    admin = boto3.client("ssm", region_name=sandbox.cfg.region, endpoint_url=sandbox.endpoint_url, **deployer_keys)
    relay = current_relay(sandbox.cfg).instance_id
    sid = admin.start_session(Target=relay, DocumentName=port_document_name(sandbox.cfg.stack_name),
                              Parameters={"localPortNumber": ["5433"]})["SessionId"]
    try:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            developer(sandbox, "ssm").terminate_session(SessionId=sid)
        assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    finally:
        admin.terminate_session(SessionId=sid)
    assert not active_sessions(sandbox)


def test_audit_needs_the_auditor_role(sandbox: Sandbox) -> None:
    from datetime import UTC, datetime, timedelta

    from ops import audit
    from ops.errors import CredentialsError

    with aws.acting_as("developer"), pytest.raises(CredentialsError) as err:
        audit._lookup(sandbox.cfg, "StartSession", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))
    assert "auditor role bastionless-sandbox-auditor" in err.value.message
    proc = invoke("audit", "--env", "sandbox", "--since", "1h", state=sandbox.state_dir)
    assert proc.returncode == 0, proc.stderr
