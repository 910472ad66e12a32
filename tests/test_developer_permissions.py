"""Every AWS call a developer task makes is an action the developer role allows.

On AWS a missing action is a FAIL line (doctor) or an AccessDenied (discovery) for every developer; the
sandbox enforces IAM too, but only on the paths its tests walk. This reads the calls from the source and
names them the way IAM does (botocore's operation names), so a new check cannot ship without its permission.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import boto3
import pytest

from stacks.policies import developer_policy
from tests.conftest import PROJECT_ROOT

SERVICES = ("ec2", "ssm", "rds", "kms", "iam", "ecs", "sts", "secretsmanager")
# Reads a developer is refused on purpose, and the module handles the refusal as the intended state.
REFUSED_BY_DESIGN = {
    # Where the env lists people only break-glass reads the master secret; doctor says so (a pass).
    "secretsmanager:GetSecretValue",
}
DEVELOPER_MODULES = ("ops/doctor.py", "ops/discovery.py", "ops/ecs_exec.py")


@cache
def operations() -> dict[str, list[str]]:
    """boto3 method name -> the IAM actions it can be, across the services developers touch."""
    found: dict[str, list[str]] = {}
    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    for service in SERVICES:
        for method, operation in session.client(service).meta.method_to_api_mapping.items():
            found.setdefault(method, []).append(f"{service}:{operation}")
    return found


def called_actions(source: str) -> set[str]:
    ops = operations()
    actions: set[str] = set()
    for method in set(re.findall(r"\.([a-z][a-z0-9_]*)\(", source)):
        candidates = ops.get(method, [])
        if len(candidates) == 1:
            actions.add(candidates[0])
        elif candidates:  # the same name in two services: the receiver names its service
            receivers = set(re.findall(rf"(\w+)(?:\(\"\w+\"\))?\.{method}\(", source))
            hinted = [a for a in candidates if a.split(":")[0] in receivers or
                      re.search(rf"client\(\"{a.split(':')[0]}\"\)\.{method}\(", source)]
            actions.update(hinted or candidates)
    return actions


def allowed_actions(policy: dict[str, Any]) -> set[str]:
    allowed: set[str] = set()
    for stmt in policy["Statement"]:
        if stmt["Effect"] == "Allow":
            acts = stmt["Action"]
            allowed.update([acts] if isinstance(acts, str) else acts)
    return {a.lower() for a in allowed}


def the_policy() -> dict[str, Any]:
    return developer_policy(
        region="us-east-1", account_id="123456789012", relay_instance_id="i-0123456789abcdef0",
        db_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1",
        db_identifier="bastionless-prod", port_document="bastionless-prod-database",
        session_key_arn="arn:aws:kms:us-east-1:123456789012:key/1", ecs_cluster_arn=(
            "arn:aws:ecs:us-east-1:123456789012:cluster/bastionless-prod"), ecs_cluster_name="bastionless-prod")


@pytest.mark.parametrize("module", DEVELOPER_MODULES)
def test_every_call_a_developer_task_makes_is_allowed_to_the_developer_role(module: str) -> None:
    source = (PROJECT_ROOT / module).read_text()
    calls = called_actions(source) - REFUSED_BY_DESIGN
    assert calls, f"no AWS calls found in {module}: the scan is broken"
    allowed = allowed_actions(the_policy())
    missing = sorted(a for a in calls if a.lower() not in allowed)
    assert not missing, f"{module} calls {missing}, which the developer role does not allow (stacks/policies.py)"


def test_the_scan_finds_a_call_and_names_it_as_iam_does() -> None:
    source = ('ec2 = self.client("ec2")\nec2.describe_vpc_attribute(VpcId=v)\n'
              'self.client("rds").describe_certificates()\n')
    assert called_actions(source) == {"ec2:DescribeVpcAttribute", "rds:DescribeCertificates"}
    assert "ec2:describevpcattribute" not in allowed_actions({"Statement": [
        {"Effect": "Deny", "Action": "ec2:DescribeVpcAttribute", "Resource": "*"}]})
