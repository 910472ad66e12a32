"""Guardrails: each rule has a compliant and a non-compliant case, on real resources in a real stack synth."""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cdktf_cdktf_provider_aws.security_group import SecurityGroup
    from constructs import Construct


@functools.cache
def cdk() -> types.SimpleNamespace:
    """The cdktf classes, imported when a test first builds a stack, not when the module is collected:
    importing cdktf starts jsii's node runtime (~0.8 s of CPU) in every xdist worker that collects this
    module, which is all four, though one of them runs these tests."""
    from cdktf import App, Aspects, TerraformStack
    from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
    from cdktf_cdktf_provider_aws.db_instance import DbInstance
    from cdktf_cdktf_provider_aws.db_parameter_group import DbParameterGroup, DbParameterGroupParameter
    from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
    from cdktf_cdktf_provider_aws.instance import Instance, InstanceMetadataOptions
    from cdktf_cdktf_provider_aws.provider import AwsProvider
    from cdktf_cdktf_provider_aws.security_group import SecurityGroup, SecurityGroupIngress
    from cdktf_cdktf_provider_aws.security_group_rule import SecurityGroupRule

    from stacks.guardrails import RULES_BY_ID, Guardrails

    return types.SimpleNamespace(
        App=App, Aspects=Aspects, TerraformStack=TerraformStack, CloudwatchLogGroup=CloudwatchLogGroup,
        DbInstance=DbInstance, DbParameterGroup=DbParameterGroup, DbParameterGroupParameter=DbParameterGroupParameter,
        IamRolePolicy=IamRolePolicy, Instance=Instance, InstanceMetadataOptions=InstanceMetadataOptions,
        AwsProvider=AwsProvider, SecurityGroup=SecurityGroup, SecurityGroupIngress=SecurityGroupIngress,
        SecurityGroupRule=SecurityGroupRule, RULES_BY_ID=RULES_BY_ID, Guardrails=Guardrails)


Build = Callable[["Construct"], Any]
pytestmark = pytest.mark.usefixtures("cdktf_runtime")


def synth_with(tmp_path: Path, build: Build, *, sandbox: bool = False,
               suppress: tuple[str, str] | None = None) -> str | None:
    """Synthesize one stack holding what `build` makes; the guardrail error text, or None when it passes."""
    app = cdk().App(outdir=str(tmp_path))
    stack = cdk().TerraformStack(app, "guarded")
    cdk().AwsProvider(stack, "aws", region="us-east-1")
    made = build(stack)
    guard = cdk().Guardrails(sandbox=sandbox)
    if suppress is not None:
        guard.suppress(made, suppress[0], reason=suppress[1])
    cdk().Aspects.of(stack).add(guard)
    stack.node.add_validation(guard)
    try:
        app.synth()
    except RuntimeError as exc:
        return str(exc)
    return None


def _db(**overrides: Any) -> Build:
    props: dict[str, Any] = dict(identifier="x", engine="postgres", instance_class="db.t4g.small",
                                 allocated_storage=20, manage_master_user_password=True, username="u",
                                 publicly_accessible=False, storage_encrypted=True, deletion_protection=True,
                                 skip_final_snapshot=False, final_snapshot_identifier="x-final")
    props.update(overrides)
    return lambda s: cdk().DbInstance(s, "Db", **props)


def _params(log_statement: str) -> Build:
    return lambda s: cdk().DbParameterGroup(s, "Params", family="postgres16", parameter=[
        cdk().DbParameterGroupParameter(name="log_statement", value=log_statement)])


def _sg_rule(**overrides: Any) -> Build:
    props: dict[str, Any] = dict(type="ingress", security_group_id="sg-1", protocol="tcp", from_port=5432,
                                 to_port=5432, source_security_group_id="sg-2", description="d")
    props.update(overrides)
    return lambda s: cdk().SecurityGroupRule(s, "Rule", **props)


def _instance(tokens: str | None) -> Build:
    return lambda s: cdk().Instance(s, "Relay", ami="ami-1", instance_type="t4g.nano", metadata_options=(
        cdk().InstanceMetadataOptions(http_tokens=tokens) if tokens else None))


def _logs(**props: Any) -> Build:
    return lambda s: cdk().CloudwatchLogGroup(s, "Logs", name="/x", **props)


def _policy(action: Any, resource: Any) -> Build:
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]}
    return lambda s: cdk().IamRolePolicy(s, "Policy", role="r", policy=json.dumps(doc))


CASES: list[tuple[str, Build, Build]] = [
    # rule id, compliant, non-compliant
    ("BL-RDS-1", _db(), _db(publicly_accessible=True)),
    ("BL-RDS-2", _db(), _db(storage_encrypted=False)),
    ("BL-RDS-3", _db(), _db(deletion_protection=False)),
    ("BL-RDS-4", _db(), _db(skip_final_snapshot=True, final_snapshot_identifier=None)),
    ("BL-RDS-5", _params("ddl"), _params("all")),
    ("BL-SG-1", _sg_rule(), _sg_rule(source_security_group_id=None, cidr_blocks=["0.0.0.0/0"])),
    ("BL-SG-2", _sg_rule(), _sg_rule(from_port=20, to_port=25)),
    ("BL-EC2-1", _instance("required"), _instance("optional")),
    ("BL-LOG-1", _logs(kms_key_id="arn:aws:kms:us-east-1:1:key/k", retention_in_days=30),
     _logs(retention_in_days=30)),
    ("BL-IAM-1", _policy("ssm:StartSession", "arn:aws:ec2:us-east-1:1:instance/i-1"),
     _policy(["ssm:StartSession"], "*")),
]


@pytest.mark.parametrize(("rule_id", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_rule(tmp_path: Path, rule_id: str, good: Build, bad: Build) -> None:
    assert synth_with(tmp_path / "good", good) is None
    error = synth_with(tmp_path / "bad", bad)
    assert error is not None and f"[{rule_id}]" in error
    rule = cdk().RULES_BY_ID[rule_id]
    assert f"Why: {rule.why}" in error and f"Fix: {rule.fix}" in error, "the message says why and how to fix"


def test_every_rule_has_a_case() -> None:
    assert sorted(cdk().RULES_BY_ID) == sorted(c[0] for c in CASES)


def test_ipv6_open_ingress_and_inline_rules(tmp_path: Path) -> None:
    def inline(s: Construct) -> SecurityGroup:
        return cdk().SecurityGroup(s, "Sg", name="x", ingress=[cdk().SecurityGroupIngress(
            protocol="tcp", from_port=443, to_port=443, ipv6_cidr_blocks=["::/0"])])
    error = synth_with(tmp_path, inline)
    assert error is not None and "[BL-SG-1]" in error and "::/0" in error


def test_all_protocols_cover_port_22(tmp_path: Path) -> None:
    error = synth_with(tmp_path, _sg_rule(type="egress", protocol="-1", from_port=0, to_port=0))
    assert error is not None and "[BL-SG-2]" in error


def test_start_session_wildcard_action_is_caught(tmp_path: Path) -> None:
    error = synth_with(tmp_path, _policy("ssm:*", "*"))
    assert error is not None and "[BL-IAM-1]" in error


def test_sandbox_relaxes_only_the_data_protection_rules(tmp_path: Path) -> None:
    assert synth_with(tmp_path / "a", _db(deletion_protection=False, skip_final_snapshot=True,
                                          final_snapshot_identifier=None), sandbox=True) is None
    error = synth_with(tmp_path / "b", _db(publicly_accessible=True), sandbox=True)
    assert error is not None and "[BL-RDS-1]" in error


def test_all_violations_are_reported_together(tmp_path: Path) -> None:
    error = synth_with(tmp_path, _db(publicly_accessible=True, storage_encrypted=False))
    assert error is not None and "[BL-RDS-1]" in error and "[BL-RDS-2]" in error


def test_suppression_with_a_reason_lets_synth_pass(tmp_path: Path) -> None:
    reason = "a throwaway test database that never holds real data"
    assert synth_with(tmp_path, _db(deletion_protection=False), suppress=("BL-RDS-3", reason)) is None


@pytest.mark.parametrize("reason", ["", "   ", "because"])
def test_suppression_needs_a_written_reason(tmp_path: Path, reason: str) -> None:
    with pytest.raises(ValueError, match="needs a written reason"):
        synth_with(tmp_path, _db(deletion_protection=False), suppress=("BL-RDS-3", reason))


def test_suppression_of_an_unknown_rule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown guardrail rule"):
        synth_with(tmp_path, _db(), suppress=("BL-NOPE", "x" * 40))


def test_shipped_environments_pass_and_only_staging_suppresses_with_a_reason(
        synthesized: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    # The session fixture synthesized every env through main.py, so the guardrails ran and passed.
    assert set(synthesized) >= {"sandbox", "staging", "prod"}
    from ops.config import load_env
    from stacks.stack import BastionlessStack

    app = cdk().App(outdir=str(tmp_path))
    suppressed = {}
    for name in ("sandbox", "staging", "prod"):
        stack = BastionlessStack(app, f"bastionless-{name}", config=load_env(name))
        suppressed[name] = stack.guardrails.suppressions
    assert suppressed["prod"] == {} and suppressed["sandbox"] == {}
    (key, reason), = suppressed["staging"].items()
    assert key == ("bastionless-staging/Database/Instance", "BL-RDS-3")
    assert "staging.toml" in reason and "deletion_protection = false" in reason


@pytest.mark.slow
def test_violation_fails_invoke_synth_with_a_guardrail_error(tmp_path: Path) -> None:
    """End to end through ops.synth (the child running main.py): the user sees GuardrailError, rule and fix."""
    from ops.config import load_env
    from ops.errors import GuardrailError
    from ops.synth import synth
    from tests.test_synth_cache import copy_project

    project = copy_project(tmp_path / "project")
    db = project / "stacks" / "database.py"
    db.write_text(db.read_text().replace("publicly_accessible=False", "publicly_accessible=True"))
    with pytest.raises(GuardrailError) as exc:
        synth(load_env("sandbox", project / "envs"), project_root=project)
    message = exc.value.message
    assert "[BL-RDS-1] bastionless-sandbox/Database/Instance (aws_db_instance)" in message
    assert "Fix: set publicly_accessible = false" in message
    # cdktf's own advice (skipValidation) would switch the guardrails off: it must not reach the user.
    assert "skipValidation" not in message


def _document_policy(action: Any, resource: Any) -> Build:
    from stacks.policy_document import policy_document

    doc = {"Version": "2012-10-17", "Statement": [{"Sid": "S", "Effect": "Allow", "Action": action,
                                                   "Resource": resource}]}
    return lambda s: cdk().IamRolePolicy(s, "Policy", role="r", policy=policy_document(s, "Doc", doc).json)


def test_start_session_on_star_is_caught_in_a_parsed_policy_document(tmp_path: Path) -> None:
    # Role policies are aws_iam_policy_document data sources (for checkov): BL-IAM-1 reads those too.
    assert synth_with(tmp_path / "good", _document_policy("ssm:StartSession",
                                                          "arn:aws:ec2:us-east-1:1:instance/i-1")) is None
    error = synth_with(tmp_path / "bad", _document_policy(["ssm:StartSession"], "*"))
    assert error is not None and "[BL-IAM-1]" in error and "statement S allows ssm:StartSession" in error
