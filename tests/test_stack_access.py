"""Access construct: developer role (trust, MFA) and a least-privilege policy, also emitted as an output."""

from __future__ import annotations

import json
from typing import Any

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
)


def _policy(doc: dict[str, Any]) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(one(doc, "aws_iam_role_policy", "Access/Policy")["policy"])
    return policy


def _stmt(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in policy["Statement"] if s.get("Sid") == sid]
    assert len(found) == 1, sid
    return found[0]


def test_trust_policy_principals_and_mfa(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        role = one(doc, "aws_iam_role", "Access/Role")
        assert role["name"] == f"bastionless-{name}-developer"
        (trust,) = json.loads(role["assume_role_policy"])["Statement"]
        assert trust["Principal"]["AWS"] == list(cfg.access.developer_principals)
        if cfg.access.require_mfa:
            assert trust["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
        else:
            assert "Condition" not in trust
    assert load_env("prod").access.require_mfa and not load_env("sandbox").access.require_mfa


def test_start_session_only_on_the_relay_and_the_port_forwarding_document(
        synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        policy = _policy(doc)
        starts = [s for s in policy["Statement"] if "ssm:StartSession" in json.dumps(s.get("Action"))]
        assert len(starts) == 1
        relay_id = ref(doc, "aws_instance", "Relay/Instance")
        assert starts[0]["Resource"] == [
            f"arn:aws:ec2:{cfg.region}:{cfg.account_id}:instance/{relay_id}",
            f"arn:aws:ssm:{cfg.region}::document/AWS-StartPortForwardingSessionToRemoteHost",
        ]


def test_terminate_and_resume_only_own_sessions_by_user_id(synthesized: dict[str, dict[str, Any]]) -> None:
    stmt = _stmt(_policy(synthesized["prod"]), "EndAndResumeOwnSessionsOnly")
    assert sorted(stmt["Action"]) == ["ssm:ResumeSession", "ssm:TerminateSession"]
    assert stmt["Resource"] == "arn:aws:ssm:*:*:session/*"
    # `$$` is Terraform's escape: IAM receives the policy variable ${aws:userid}, which works for roles.
    assert stmt["Condition"] == {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["$${aws:userid}"]}}
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


def test_policy_is_emitted_as_an_output(synthesized: dict[str, dict[str, Any]]) -> None:
    for doc in synthesized.values():
        assert doc["output"]["developer_policy_json"]["value"] == ref(doc, "aws_iam_role_policy", "Access/Policy",
                                                                      "policy")
