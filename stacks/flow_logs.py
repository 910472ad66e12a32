"""VPC flow logs for production environments: the only network record of what the relay reached."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.flow_log import FlowLog
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from constructs import Construct

from ops.facts import partition
from stacks.network import Network
from stacks.policy_document import policy_document


def flow_log_group_name(env: str) -> str:
    return f"/bastionless/{env}/vpc-flow-logs"


class FlowLogs(Construct):
    """Every accepted and rejected flow of the VPC, to a KMS-encrypted log group with bounded retention."""

    key: KmsKey
    log_group: CloudwatchLogGroup
    role: IamRole
    flow_log: FlowLog

    def __init__(self, scope: Construct, construct_id: str, *, name: str, env: str, region: str, account_id: str,
                 network: Network, retention_days: int) -> None:
        super().__init__(scope, construct_id)
        part = partition(region)
        group = flow_log_group_name(env)
        group_arn = f"arn:{part}:logs:{region}:{account_id}:log-group:{group}"
        self.key = KmsKey(self, "Key", description=f"{name}: VPC flow logs", enable_key_rotation=True,
                          deletion_window_in_days=30, policy=json.dumps({"Version": "2012-10-17", "Statement": [
                              {"Sid": "AccountAdministers", "Effect": "Allow",
                               "Principal": {"AWS": f"arn:{part}:iam::{account_id}:root"}, "Action": "kms:*",
                               "Resource": "*"},
                              {"Sid": "CloudWatchLogsForTheFlowLogGroupOnly", "Effect": "Allow",
                               "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                               "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                                          "kms:Describe*"],
                               "Resource": "*",
                               "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": group_arn}}},
                          ]}))
        self.log_group = CloudwatchLogGroup(self, "LogGroup", name=group, retention_in_days=retention_days,
                                            kms_key_id=self.key.arn)
        # The delivery role: only this account's flow logs may use it (confused deputy), only into this group.
        self.role = IamRole(self, "Role", name=f"{name}-flow-logs", description="VPC flow logs delivery",
                            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                                "Effect": "Allow", "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
                                "Action": "sts:AssumeRole",
                                "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}}]}))
        document = policy_document(self, "PolicyDocument", {"Version": "2012-10-17", "Statement": [{
            "Sid": "DeliverToTheFlowLogGroupOnly", "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            "Resource": [group_arn, f"{group_arn}:*"]}]})
        IamRolePolicy(self, "Policy", name="deliver-flow-logs", role=self.role.id, policy=document.json)
        self.flow_log = FlowLog(self, "FlowLog", vpc_id=network.vpc.id, traffic_type="ALL",
                                log_destination_type="cloud-watch-logs", log_destination=self.log_group.arn,
                                iam_role_arn=self.role.arn, max_aggregation_interval=60,
                                tags={"Name": f"{name}-flow-logs"})
