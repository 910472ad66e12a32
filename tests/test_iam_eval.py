"""The sandbox's IAM evaluator (sans-I/O), the request scoping moto gets from us, and custom Port documents."""

from __future__ import annotations

from typing import Any

import pytest

from ops.sandbox import iam_eval
from ops.sandbox.endpoint_iam import Refused, port_document_parameters
from ops.sandbox.iam_eval import Decision, Principal, Request
from ops.sandbox.moto_iam import document_arn, mfa_context, request_scope

ACCOUNT = "123456789012"
ROLE_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/bastionless-sandbox-developer/alice"


def who(*statements: dict[str, Any], arn: str = ROLE_SESSION, userid: str = "AROAEXAMPLE:alice") -> Principal:
    return Principal(arn=arn, userid=userid, account=ACCOUNT,
                     policies=({"Version": "2012-10-17", "Statement": list(statements)},))


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def test_resource_scoping_is_evaluated_unlike_plain_moto() -> None:
    secret = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:rds!db-1-AbCdEf"
    p = who(allow("secretsmanager:GetSecretValue", secret))
    assert iam_eval.evaluate(p, "secretsmanager:GetSecretValue", secret).allowed
    other = iam_eval.evaluate(p, "secretsmanager:GetSecretValue", secret.replace("db-1", "db-2"))
    assert other.decision is Decision.IMPLICIT_DENY
    assert iam_eval.evaluate(p, "secretsmanager:GetSecretValue", "*").decision is Decision.IMPLICIT_DENY


def test_actions_match_case_insensitively_with_wildcards_and_deny_wins() -> None:
    p = who(allow("ec2:Describe*"), {"Effect": "Deny", "Action": "ec2:DescribeSubnets", "Resource": "*", "Sid": "No"})
    assert iam_eval.evaluate(p, "EC2:describeinstances", "*").allowed
    denied = iam_eval.evaluate(p, "ec2:DescribeSubnets", "*")
    assert denied.decision is Decision.EXPLICIT_DENY and "No" in denied.why
    assert not iam_eval.evaluate(p, "ec2:StopInstances", "*").allowed


def test_userid_variable_and_session_tag_condition() -> None:
    stmt = allow(["ssm:TerminateSession"], "arn:aws:ssm:*:*:session/*",
                 Condition={"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]}})
    p = who(stmt)
    session = f"arn:aws:ssm:us-east-1:{ACCOUNT}:session/alice-0123"
    mine = {"ssm:resourceTag/aws:ssmmessages:session-id": ["AROAEXAMPLE:alice"]}
    theirs = {"ssm:resourceTag/aws:ssmmessages:session-id": ["AROAEXAMPLE:bob"]}
    assert iam_eval.evaluate(p, "ssm:TerminateSession", session, mine).allowed
    assert not iam_eval.evaluate(p, "ssm:TerminateSession", session, theirs).allowed
    # No tag at all (a session nobody we know started): a positive operator fails.
    assert not iam_eval.evaluate(p, "ssm:TerminateSession", session, {}).allowed


def test_if_exists_null_and_negated_operators_on_a_missing_key() -> None:
    p = who(allow("ssm:StartSession", Condition={"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}))
    assert iam_eval.evaluate(p, "ssm:StartSession", "*", {}).allowed
    assert not iam_eval.evaluate(p, "ssm:StartSession", "*", {"ssm:SessionDocumentAccessCheck": ["false"]}).allowed
    q = who(allow("ecs:ListTasks", Condition={"StringNotEquals": {"ecs:cluster": "x"}}))
    assert iam_eval.evaluate(q, "ecs:ListTasks", "*", {}).allowed
    r = who(allow("s3:GetObject", Condition={"Null": {"aws:SourceVpce": "true"}}))
    assert iam_eval.evaluate(r, "s3:GetObject", "*", {}).allowed
    assert not iam_eval.evaluate(r, "s3:GetObject", "*", {"aws:SourceVpce": ["vpce-1"]}).allowed


def test_an_operator_we_cannot_evaluate_is_refused_by_name_not_ignored() -> None:
    p = who(allow("ssm:StartSession", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}))
    outcome = iam_eval.authorize(p, Request("ssm:StartSession", ("*",), {"aws:SourceIp": ["10.1.1.1"]}))
    assert not outcome.allowed and "IpAddress" in outcome.why


def test_start_session_needs_every_resource_instance_and_document() -> None:
    instance = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1"
    mine = document_arn("bastionless-sandbox-database", "us-east-1", ACCOUNT)
    p = who(allow("ssm:StartSession", [instance, mine]))
    assert iam_eval.authorize(p, Request("ssm:StartSession", (instance, mine))).allowed
    generic = document_arn("AWS-StartPortForwardingSessionToRemoteHost", "us-east-1", ACCOUNT)
    assert generic == "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSessionToRemoteHost"
    refused = iam_eval.authorize(p, Request("ssm:StartSession", (instance, generic)))
    assert not refused.allowed and refused.resource == generic
    assert "is not authorized to perform: ssm:StartSession on resource: " + generic in \
        iam_eval.denial_message(p, refused)


def test_trust_policy_account_root_role_sessions_and_mfa() -> None:
    engineer = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/engineer", userid="AIDA1", account=ACCOUNT)
    root_trust = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                 "Action": "sts:AssumeRole"}]}
    assert iam_eval.trust_allows(root_trust, engineer).allowed
    stranger = Principal(arn="arn:aws:iam::999999999999:user/x", userid="AIDA2", account="999999999999")
    assert not iam_eval.trust_allows(root_trust, stranger).allowed
    mfa = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": [engineer.arn]}, "Action": "sts:AssumeRole",
                          "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}}}]}
    assert not iam_eval.trust_allows(mfa, engineer).allowed  # long-term keys carry no MFA key
    assert iam_eval.trust_allows(mfa, engineer, context={"aws:MultiFactorAuthPresent": ["true"]}).allowed
    sso = Principal(arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_Dev_abc/alice@example.com",
                    userid="AROA3:alice@example.com", account=ACCOUNT)
    by_role = {"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                              "Principal": {"AWS": [f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/"
                                                    "AWSReservedSSO_Dev_abc"]}}]}
    assert iam_eval.trust_allows(by_role, sso).allowed


def test_the_break_glass_trust_needs_mfa_presented_just_now() -> None:
    """stacks/db_identity.BreakGlass's trust: Bool MFA present and NumericLessThan MFA age 3600, evaluated
    with what AssumeRole + SerialNumber + TokenCode brings (ops/sandbox/moto_iam.mfa_context)."""
    engineer = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/engineer", userid="AIDA1", account=ACCOUNT)
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                            "Action": "sts:AssumeRole",
                            "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"},
                                          "NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}}]}
    device = f"arn:aws:iam::{ACCOUNT}:mfa/engineer"
    presented = mfa_context([device], ["123456"], [device])
    assert iam_eval.trust_allows(trust, engineer, context=presented).allowed
    assert not iam_eval.trust_allows(trust, engineer).allowed  # long-term keys alone
    stale = {**presented, "aws:MultiFactorAuthAge": ["7200"]}
    assert not iam_eval.trust_allows(trust, engineer, context=stale).allowed
    # Someone else's device, no code, or a code that is not six digits: no MFA at all.
    assert mfa_context([device], ["123456"], [f"arn:aws:iam::{ACCOUNT}:mfa/bob"]) == {}
    assert mfa_context([device], [], [device]) == {}
    assert mfa_context([device], ["12345"], [device]) == {}


@pytest.mark.parametrize(("operator", "wanted", "actual", "holds"), [
    ("NumericLessThan", "10", "9", True), ("NumericLessThan", "10", "10", False),
    ("NumericLessThanEquals", "10", "10", True), ("NumericGreaterThan", "10", "11", True),
    ("NumericGreaterThanEquals", "10", "9", False), ("NumericEquals", "10", "10.0", True),
    ("NumericNotEquals", "10", "10", False), ("NumericNotEquals", "10", "3", True),
    ("NumericLessThan", "10", "ten", False),
])
def test_numeric_condition_operators(operator: str, wanted: str, actual: str, holds: bool) -> None:
    p = who(allow("s3:GetObject", Condition={operator: {"aws:MultiFactorAuthAge": wanted}}))
    outcome = iam_eval.evaluate(p, "s3:GetObject", "*", {"aws:MultiFactorAuthAge": [actual]})
    assert outcome.allowed is holds


def test_sandbox_mfa_codes_are_rfc_6238_totp() -> None:
    from ops.sandbox import mfa

    # RFC 6238 appendix B, SHA-1 secret "12345678901234567890": 94287082 at T=59, 07081804 at T=1111111109.
    seed = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    assert mfa.code(seed, now=59) == "287082"
    assert mfa.code(seed, now=1111111109) == "081804"


def _scope(service: str, action: str, **params: Any) -> tuple[list[str], dict[str, list[str]]]:
    def param(name: str) -> list[str]:
        value = params.get(name)
        return [] if value is None else [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return request_scope(service, action, "us-east-1", ACCOUNT, param, backends=None)


def test_request_scope_names_resources_the_way_aws_does() -> None:
    assert _scope("rds", "DescribeDBInstances", DBInstanceIdentifier="bastionless-sandbox")[0] == [
        f"arn:aws:rds:us-east-1:{ACCOUNT}:db:bastionless-sandbox"]
    resources, context = _scope("ecs", "ExecuteCommand", cluster="c1", task="abc", container="app")
    assert resources == [f"arn:aws:ecs:us-east-1:{ACCOUNT}:task/c1/abc", f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/c1"]
    assert context["ecs:cluster"] == [f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/c1"]
    # AttachRolePolicy is on the role; the policy is only a condition key.
    resources, context = _scope("iam", "AttachRolePolicy", RoleName="r", PolicyArn="arn:aws:iam::aws:policy/P")
    assert resources == [f"arn:aws:iam::{ACCOUNT}:role/r"]
    assert context == {"iam:PolicyARN": ["arn:aws:iam::aws:policy/P"]}
    resources, _ = _scope("ssm", "StartSession", Target="i-1", DocumentName="bastionless-sandbox-database")
    assert resources == [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1",
                         f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/bastionless-sandbox-database"]
    assert _scope("ec2", "DescribeInstances") == ([], {})  # no resource-level permissions: "*"
    assert _scope("ec2", "DescribeVpcAttribute", VpcId="vpc-1")[0] == [f"arn:aws:ec2:us-east-1:{ACCOUNT}:vpc/vpc-1"]
    assert _scope("ssm", "DescribeInstancePatchStates", InstanceIds="i-1")[0] == [
        f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1"]
    # CreatePolicy's request carries a name and a path; IAM authorizes the ARN they make.
    assert _scope("iam", "CreatePolicy", PolicyName="bastionless-sandbox-db", Path="/x/")[0] == [
        f"arn:aws:iam::{ACCOUNT}:policy/x/bastionless-sandbox-db"]
    assert _scope("iam", "CreatePolicy", PolicyName="other")[0] == [f"arn:aws:iam::{ACCOUNT}:policy/other"]


DOC = {"schemaVersion": "1.0", "sessionType": "Port",
       "parameters": {"localPortNumber": {"type": "String", "allowedPattern": "^[0-9]{1,5}$", "default": "0"}},
       "properties": {"type": "LocalPortForwarding", "host": "db.example.internal", "portNumber": "5432",
                      "localPortNumber": "{{ localPortNumber }}"}}


def test_port_document_fixes_host_and_port() -> None:
    assert port_document_parameters("d", DOC, {"localPortNumber": ["5433"]}) == {
        "host": ["db.example.internal"], "portNumber": ["5432"], "localPortNumber": ["5433"]}
    assert port_document_parameters("d", DOC, {})["localPortNumber"] == ["0"]


@pytest.mark.parametrize("given", [{"host": ["169.254.169.254"], "portNumber": ["80"]},
                                   {"host": ["10.40.8.9"]}, {"portNumber": ["22"], "localPortNumber": ["1"]}])
def test_port_document_refuses_parameters_it_does_not_declare(given: dict[str, list[str]]) -> None:
    with pytest.raises(Refused) as err:
        port_document_parameters("bastionless-sandbox-database", DOC, given)
    assert err.value.code == "InvalidParameters" and "does not support" in err.value.message


def test_port_document_pattern_and_session_type() -> None:
    with pytest.raises(Refused, match="allowedPattern"):
        port_document_parameters("d", DOC, {"localPortNumber": ["5433; rm -rf /"]})
    with pytest.raises(Refused, match="sessionType"):
        port_document_parameters("d", {**DOC, "sessionType": "Standard_Stream"}, {})
