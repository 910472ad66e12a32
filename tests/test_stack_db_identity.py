"""IAM for per-person DB identities: rds-db:connect only as your own DB user (principal tag), and the
break-glass role (MFA) as the only reader of the master secret."""

from __future__ import annotations

import json
from typing import Any

from ops.config import load_env
from stacks.policies import tag_session_trust_statement
from tests.stack_fixtures import (
    one,
    ref,
    synth_dirs_fixture,  # noqa: F401
    synthesized_fixture,  # noqa: F401
)
from tests.test_stack_access import document


def test_developers_connect_only_as_the_db_user_in_their_own_principal_tag(
        synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        policy = one(doc, "aws_iam_policy", "DbConnect/Policy")
        (stmt,) = json.loads(policy["policy"])["Statement"]
        resource_id = ref(doc, "aws_db_instance", "Database/Instance", "resource_id")
        assert stmt["Action"] == "rds-db:connect" and stmt["Effect"] == "Allow"
        # One resource, no list of people: the caller's tag picks the DB user; `$$` is Terraform's escape.
        assert stmt["Resource"] == (f"arn:aws:rds-db:{cfg.region}:{cfg.account_id}:dbuser:{resource_id}/"
                                    "$${aws:PrincipalTag/db_user}")
        attachment = one(doc, "aws_iam_role_policy_attachment", "DbConnect/Developer")
        assert attachment["role"] == ref(doc, "aws_iam_role", "Access/Role", "name")
        assert attachment["policy_arn"] == ref(doc, "aws_iam_policy", "DbConnect/Policy", "arn")
        assert "*" not in stmt["Resource"]


def test_only_break_glass_reads_the_master_secret_and_it_needs_fresh_mfa(
        synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        secret = ref(doc, "aws_db_instance", "Database/Instance", "master_user_secret[0].secret_arn")
        readers = [path for path, data in doc["data"].get("aws_iam_policy_document", {}).items()
                   if "secretsmanager:GetSecretValue" in json.dumps(data)]
        # Break-glass always; developers too only while the env lists no people (no identities of their own).
        assert len(readers) == (1 if load_env(name).people else 2), readers
        role = one(doc, "aws_iam_role", "BreakGlass/Role")
        assert role["name"] == f"bastionless-{name}-break-glass"
        assert role["max_session_duration"] == 3600
        (trust,) = json.loads(role["assume_role_policy"])["Statement"]
        named = load_env(name).access.break_glass_principals
        if named:  # the admins' SSO role: their IdP's MFA, no MFA key in the session to check
            assert trust["Sid"] == "FederatedRoles" and trust["Principal"] == {"AWS": list(named)}
            assert not any(":role/" in p and "Engineers" in p for p in named), "not the engineers' role"
        else:  # the sandbox: IAM users (the account root) with MFA under an hour old
            assert trust["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"},
                                          "NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}
        policy = document(doc, "BreakGlass/Policy")
        (read,) = [s for s in policy["Statement"] if s["Sid"] == "MasterSecretBreakGlassOnly"]
        assert read["Resource"] == secret
        # It can open the tunnel too (the developer's session permissions), but no rds-db:connect wildcard.
        assert any("ssm:StartSession" in json.dumps(s["Action"]) for s in policy["Statement"])
        assert "rds-db" not in json.dumps(policy)


def test_a_session_tag_can_only_repeat_the_callers_own_db_user() -> None:
    stmt = tag_session_trust_statement(["arn:aws:iam::123456789012:root"])
    assert stmt["Action"] == "sts:TagSession"
    assert stmt["Condition"]["StringEquals"] == {"aws:RequestTag/db_user": "$${aws:PrincipalTag/db_user}"}


def test_break_glass_trust_admits_sso_roles_without_an_mfa_key_and_iam_users_with_fresh_mfa() -> None:
    """Identity Center sessions carry no aws:MultiFactorAuthPresent (their MFA is the IdP's sign-in): an MFA
    condition on them would lock every SSO admin out of break-glass. IAM users keep MFA under an hour old."""
    from stacks.policies import trust_policy

    sso = "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123"
    user = "arn:aws:iam::123456789012:user/oncall"
    trust = trust_policy(principals=(sso, user), require_mfa=True, region="us-east-1", account_id="123456789012",
                         mfa_max_age=3600)
    by_sid = {s["Sid"]: s for s in trust["Statement"]}
    assert by_sid["FederatedRoles"]["Principal"] == {"AWS": [sso]} and "Condition" not in by_sid["FederatedRoles"]
    assert by_sid["IamPrincipals"]["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"},
                                                    "NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}
