"""IAM policies as `aws_iam_policy_document` data sources, not JSON strings.

checkov (and a reviewer reading cdk.tf.json) cannot evaluate a policy that is a JSON string with Terraform
references inside: its IAM checks report UNKNOWN. As a data source every statement is a parsed block, so
checkov judges each action and resource. The policies stay plain dicts where they are written (so ops and
tests can reason about them); this converts one, and the role policy takes the data source's `json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdktf_cdktf_provider_aws.data_aws_iam_policy_document import (
    DataAwsIamPolicyDocument,
    DataAwsIamPolicyDocumentStatement,
    DataAwsIamPolicyDocumentStatementCondition,
)
from constructs import Construct


def _list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _iam_variable(text: str) -> str:
    # The data source writes IAM's own `${aws:userid}` as `&{aws:userid}` (Terraform would interpolate `${`).
    return text.replace("$${", "&{")


def policy_document(scope: Construct, construct_id: str, policy: Mapping[str, Any]) -> DataAwsIamPolicyDocument:
    """An identity policy (Sid, Effect, Action, Resource, Condition) as a data source with the same meaning."""
    statements: list[DataAwsIamPolicyDocumentStatement] = []
    for stmt in policy["Statement"]:
        conditions = [DataAwsIamPolicyDocumentStatementCondition(test=operator, variable=key,
                                                                 values=[_iam_variable(v) for v in _list(values)])
                      for operator, pairs in (stmt.get("Condition") or {}).items() for key, values in pairs.items()]
        statements.append(DataAwsIamPolicyDocumentStatement(
            sid=stmt.get("Sid"), effect=stmt.get("Effect", "Allow"), actions=_list(stmt["Action"]),
            resources=[_iam_variable(r) for r in _list(stmt["Resource"])], condition=conditions or None))
    return DataAwsIamPolicyDocument(scope, construct_id, version=str(policy.get("Version", "2012-10-17")),
                                    statement=statements)
