"""Access construct: developer role (trust, MFA) and a least-privilege policy, also emitted as an output."""

from __future__ import annotations

import json
from typing import Any

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
)


def document(doc: dict[str, Any], policy_path: str) -> dict[str, Any]:
    """A role policy's aws_iam_policy_document, back in IAM's JSON shape (one value: a string, as IAM writes it)."""
    reference = one(doc, "aws_iam_role_policy", policy_path)["policy"]
    assert reference.startswith("${data.aws_iam_policy_document.") and reference.endswith(".json}"), reference
    data = doc["data"]["aws_iam_policy_document"][reference.split(".")[2]]

    def value(items: list[str]) -> Any:
        return items[0] if len(items) == 1 else items

    statements = []
    for block in data["statement"]:
        stmt: dict[str, Any] = {"Sid": block["sid"], "Effect": block["effect"], "Action": value(block["actions"]),
                                "Resource": value(block["resources"])}
        for cond in block.get("condition", []):
            stmt.setdefault("Condition", {}).setdefault(cond["test"], {})[cond["variable"]] = cond["values"]
        statements.append(stmt)
    return {"Version": data["version"], "Statement": statements}


def _policy(doc: dict[str, Any]) -> dict[str, Any]:
    return document(doc, "Access/Policy")


def _stmt(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in policy["Statement"] if s.get("Sid") == sid]
    assert len(found) == 1, sid
    return found[0]


def test_trust_policy_principals_and_mfa(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        role = one(doc, "aws_iam_role", "Access/Role")
        assert role["name"] == f"bastionless-{name}-developer"
        statements = [s for s in json.loads(role["assume_role_policy"])["Statement"] if s["Action"] == "sts:AssumeRole"]
        named = [p for s in statements for p in s["Principal"]["AWS"]]
        assert sorted(named) == sorted(cfg.access.developer_principals)
        for stmt in statements:
            roles_only = all(":role/" in p for p in stmt["Principal"]["AWS"])
            if cfg.access.require_mfa and not roles_only:
                assert stmt["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
            else:
                # SSO / federated roles never carry aws:MultiFactorAuthPresent: MFA is the IdP's.
                assert "Condition" not in stmt
    assert load_env("prod").access.require_mfa and not load_env("sandbox").access.require_mfa


def test_developers_may_bring_only_their_own_db_user_session_tag(synthesized: dict[str, dict[str, Any]]) -> None:
    """SSO users chain into the developer role: the db_user tag they pass (the ABAC key of rds-db:connect)
    must be allowed, and only with the value they carry; the auditor role takes no tags at all."""
    for name, doc in synthesized.items():
        cfg = load_env(name)
        statements = json.loads(one(doc, "aws_iam_role", "Access/Role")["assume_role_policy"])["Statement"]
        (tag,) = [s for s in statements if s["Action"] == "sts:TagSession"]
        assert sorted(tag["Principal"]["AWS"]) == sorted(cfg.access.developer_principals)
        assert tag["Condition"] == {"StringEquals": {"aws:RequestTag/db_user": "$${aws:PrincipalTag/db_user}"},
                                    "ForAllValues:StringEquals": {"aws:TagKeys": ["db_user"]}}
        auditor = json.loads(one(doc, "aws_iam_role", "Access/AuditorRole")["assume_role_policy"])["Statement"]
        assert all(s["Action"] == "sts:AssumeRole" for s in auditor)


def test_trust_policy_mfa_holds_for_users_and_lets_sso_roles_in() -> None:
    from stacks.policies import trust_policy

    doc = trust_policy(principals=("arn:aws:iam::222222222222:user/alice",
                                   "arn:aws:iam::222222222222:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Dev_1"),
                       require_mfa=True, region="eu-west-1", account_id="222222222222")
    users, roles = doc["Statement"]
    assert users["Principal"]["AWS"] == ["arn:aws:iam::222222222222:user/alice"]
    assert users["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
    assert roles["Principal"]["AWS"][0].endswith("AWSReservedSSO_Dev_1") and "Condition" not in roles


def test_start_session_only_on_the_relay_and_the_envs_own_port_document(
        synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        policy = _policy(doc)
        starts = [s for s in policy["Statement"] if "ssm:StartSession" in json.dumps(s.get("Action"))]
        assert len(starts) == 1
        relay_id = ref(doc, "aws_instance", "Relay/Instance")
        document = ref(doc, "aws_ssm_document", "Access/DatabasePortDocument", "name")
        assert starts[0]["Resource"] == [
            f"arn:aws:ec2:{cfg.region}:{cfg.account_id}:instance/{relay_id}",
            f"arn:aws:ssm:{cfg.region}:{cfg.account_id}:document/{document}",
        ]
        assert "AWS-StartPortForwardingSession" not in json.dumps(_policy(doc))


def test_port_document_fixes_host_and_port_to_the_database(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        res = one(doc, "aws_ssm_document", "Access/DatabasePortDocument")
        assert res["name"] == f"bastionless-{name}-database" and res["document_type"] == "Session"
        content = json.loads(res["content"])
        assert content["sessionType"] == "Port"
        assert set(content["parameters"]) == {"localPortNumber"}
        assert content["properties"]["host"] == ref(doc, "aws_db_instance", "Database/Instance", "address")
        assert content["properties"]["portNumber"] == ref(doc, "aws_db_instance", "Database/Instance", "port")


def test_cloudtrail_is_the_auditors_not_the_developers(synthesized: dict[str, dict[str, Any]]) -> None:
    for doc in synthesized.values():
        assert "cloudtrail:" not in json.dumps(_policy(doc))
        auditor = document(doc, "Access/AuditorPolicy")
        assert "cloudtrail:LookupEvents" in auditor["Statement"][0]["Action"]
        assert one(doc, "aws_iam_role", "Access/AuditorRole")["name"].endswith("-auditor")


def test_scoped_reads_and_no_unused_decrypt(synthesized: dict[str, dict[str, Any]]) -> None:
    policy = _policy(synthesized["prod"])
    assert _stmt(policy, "ScopedReads")["Resource"].startswith("arn:aws:rds:eu-west-1:222222222222:db:")
    assert _stmt(policy, "RelayConnectionStatus")["Resource"].startswith("arn:aws:ec2:")
    assert "kms:Decrypt" not in _stmt(policy, "SessionEncryptionKey")["Action"]


def test_terminate_and_resume_only_own_sessions_by_user_id(synthesized: dict[str, dict[str, Any]]) -> None:
    stmt = _stmt(_policy(synthesized["prod"]), "EndAndResumeOwnSessionsOnly")
    assert sorted(stmt["Action"]) == ["ssm:ResumeSession", "ssm:TerminateSession"]
    assert stmt["Resource"] == "arn:aws:ssm:*:*:session/*"
    # `&{...}` is the policy document's escape: IAM receives the variable ${aws:userid}, which works for roles.
    assert stmt["Condition"] == {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["&{aws:userid}"]}}
    assert "aws:username" not in json.dumps(_policy(synthesized["prod"]))


def test_developers_cannot_read_the_master_secret(synthesized: dict[str, dict[str, Any]]) -> None:
    # Developers log in as themselves (tests/test_stack_db_identity.py); only break-glass reads it.
    for doc in synthesized.values():
        assert "secretsmanager" not in json.dumps(_policy(doc))


def test_describes_are_read_only(synthesized: dict[str, dict[str, Any]]) -> None:
    stmt = _stmt(_policy(synthesized["prod"]), "ReadOnlyDescribes")
    assert all(a.split(":")[1].startswith(("Describe", "Get", "List", "Lookup")) for a in stmt["Action"])


def test_ecs_exec_scoped_to_the_cluster_when_enabled(synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["prod"]
    cfg = load_env("prod")
    stmt = _stmt(_policy(doc), "EcsExecInTheClusterOnly")
    cluster_arn = ref(doc, "aws_ecs_cluster", "EcsExec/Cluster", "arn")
    cluster_name = ref(doc, "aws_ecs_cluster", "EcsExec/Cluster", "name")
    assert stmt["Resource"] == [cluster_arn, f"arn:aws:ecs:{cfg.region}:{cfg.account_id}:task/{cluster_name}/*"]
    reads = _stmt(_policy(doc), "EcsReadInTheClusterOnly")
    assert all(f"/{cluster_name}/" in r for r in reads["Resource"])
    assert reads["Condition"] == {"ArnEquals": {"ecs:cluster": [cluster_arn]}}


def test_policy_is_emitted_as_an_output(synthesized: dict[str, dict[str, Any]]) -> None:
    for doc in synthesized.values():
        assert doc["output"]["developer_policy_json"]["value"] == ref(doc, "aws_iam_role_policy", "Access/Policy",
                                                                      "policy")
