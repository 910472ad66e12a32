"""Relay construct: no ingress, narrow egress, SSM role, IMDSv2, encrypted gp3, AMI from SSM, tags."""

from __future__ import annotations

from typing import Any

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
    resources,
)
from tests.test_stack_access import document


def _rules_of(doc: dict[str, Any], sg_path: str) -> list[dict[str, Any]]:
    sg = ref(doc, "aws_security_group", sg_path)
    return [r for r in resources(doc, "aws_security_group_rule").values() if r["security_group_id"] == sg]


def test_security_group_has_no_ingress_and_only_443_and_5432_out(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        sg = one(doc, "aws_security_group", "Relay/SecurityGroup")
        assert sg["name"] == f"bastionless-{name}-relay"
        assert "ingress" not in sg and "egress" not in sg
        rules = _rules_of(doc, "Relay/SecurityGroup")
        assert all(r["type"] == "egress" for r in rules)
        assert {r["from_port"] for r in rules} == {443, 5432}
        db = [r for r in rules if r["from_port"] == 5432]
        assert len(db) == 1 and db[0]["source_security_group_id"] == ref(doc, "aws_security_group",
                                                                          "Database/SecurityGroup")


def test_https_egress_to_endpoints_or_anywhere_by_mode(synthesized: dict[str, dict[str, Any]]) -> None:
    prod = [r for r in _rules_of(synthesized["prod"], "Relay/SecurityGroup") if r["from_port"] == 443]
    assert not any("cidr_blocks" in r for r in prod), "endpoints mode: no egress to the internet"
    assert {r.get("source_security_group_id") for r in prod} >= {
        ref(synthesized["prod"], "aws_security_group", "Network/EndpointSecurityGroup")}
    assert any(r.get("prefix_list_ids") for r in prod), "S3 gateway endpoint for package updates"
    staging = [r for r in _rules_of(synthesized["staging"], "Relay/SecurityGroup") if r["from_port"] == 443]
    assert [r["cidr_blocks"] for r in staging] == [["0.0.0.0/0"]]


def test_role_profile_and_session_manager_only_policy(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        role = one(doc, "aws_iam_role", "Relay/Role")
        assert role["name"] == f"bastionless-{name}-relay"
        assert '"ec2.amazonaws.com"' in role["assume_role_policy"]
        # No AmazonSSMManagedInstanceCore: it grants every parameter of the account, Run Command, patching.
        attached = [a for a in doc["resource"].get("aws_iam_role_policy_attachment", {}).values()
                    if a["role"] == ref(doc, "aws_iam_role", "Relay/Role", "name")]
        assert attached == []
        policy = document(doc, "Relay/SessionManagerPolicy")
        actions = sorted(a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                                  else s["Action"]))
        # Session Manager, plus Run Command's channel and patch-state reporting: patching (stacks/patching.py)
        # reaches the relay as Run Command. Nothing for Parameter Store, S3 or other instances' documents.
        assert actions == sorted([
            "kms:Decrypt", "ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
            "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
            "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
            "ssm:UpdateInstanceAssociationStatus", "ssm:ListInstanceAssociations", "ssm:PutInventory",
            "ssm:PutComplianceItems", "ssm:ListAssociations", "ssm:GetDeployablePatchSnapshotForInstance",
            "ssm:GetDocument", "ssm:DescribeDocument"])
        assert not any(a.startswith(("ssm:GetParameter", "s3:")) for a in actions)
        profile = one(doc, "aws_iam_instance_profile", "Relay/InstanceProfile")
        assert profile["role"] == ref(doc, "aws_iam_role", "Relay/Role", "name")


def test_instance(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        inst = one(doc, "aws_instance", "Relay/Instance")
        params = doc["data"]["aws_ssm_parameter"]
        assert [p["name"] for p in params.values() if p["//"]["metadata"]["path"].endswith("/Relay/Ami")] == [
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"]
        assert inst["ami"].startswith("${data.aws_ssm_parameter.") and inst["ami"].endswith(".value}")
        assert inst["instance_type"] == cfg.relay.instance_type == "t4g.nano"
        assert inst["subnet_id"] == ref(doc, "aws_subnet", "Network/PrivateSubnet1")
        assert inst["metadata_options"] == {"http_endpoint": "enabled", "http_tokens": "required",
                                            "http_put_response_hop_limit": 1}
        root = inst["root_block_device"]
        assert root["encrypted"] is True and root["volume_type"] == "gp3"
        assert root["volume_size"] == cfg.relay.root_volume_gb
        assert "key_name" not in inst
        assert inst["associate_public_ip_address"] is False
        assert inst["vpc_security_group_ids"] == [ref(doc, "aws_security_group", "Relay/SecurityGroup")]
        assert inst["iam_instance_profile"] == ref(doc, "aws_iam_instance_profile", "Relay/InstanceProfile", "name")
        assert inst["tags"] == {"Name": f"bastionless-{name}/TunnelInstance", "bastionless:env": name,
                                "bastionless:role": "relay"}
