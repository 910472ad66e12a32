"""ECS Exec: a cluster whose exec sessions are logged (KMS-encrypted) and an optional sample service."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.ecs_cluster import (
    EcsCluster,
    EcsClusterConfiguration,
    EcsClusterConfigurationExecuteCommandConfiguration,
    EcsClusterConfigurationExecuteCommandConfigurationLogConfiguration,
    EcsClusterSetting,
)
from cdktf_cdktf_provider_aws.ecs_service import EcsService, EcsServiceNetworkConfiguration
from cdktf_cdktf_provider_aws.ecs_task_definition import EcsTaskDefinition
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.security_group_rule import SecurityGroupRule
from constructs import Construct

from ops.facts import partition
from stacks.network import Network
from stacks.policy_document import policy_document
from stacks.session_logs import SessionLogs

SAMPLE_CONTAINER = "app"
SAMPLE_IMAGE = "public.ecr.aws/amazonlinux/amazonlinux:2023"
# What ECS Exec's agent inside the task needs (AWS ECS Exec docs).
EXEC_TASK_ACTIONS = ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                     "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"]


def _assume(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


class EcsExec(Construct):
    """Cluster with execute_command_configuration, task role for exec, optional Fargate sample service."""

    cluster: EcsCluster
    task_role: IamRole
    execution_role: IamRole | None
    task_security_group: SecurityGroup | None
    task_definition: EcsTaskDefinition | None
    service: EcsService | None

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, network: Network,
                 session_logs: SessionLogs, sample_service: bool) -> None:
        super().__init__(scope, construct_id)
        part = partition(region)
        self.cluster = EcsCluster(
            self, "Cluster", name=name,
            setting=[EcsClusterSetting(name="containerInsights", value="enabled")],
            configuration=EcsClusterConfiguration(
                execute_command_configuration=EcsClusterConfigurationExecuteCommandConfiguration(
                    kms_key_id=session_logs.key.arn,
                    logging="OVERRIDE",
                    log_configuration=EcsClusterConfigurationExecuteCommandConfigurationLogConfiguration(
                        cloud_watch_log_group_name=session_logs.log_group.name,
                        cloud_watch_encryption_enabled=True))))

        self.task_role = IamRole(self, "TaskRole", name=f"{name}-ecs-task", assume_role_policy=_assume(
            "ecs-tasks.amazonaws.com"), description="ECS tasks: ECS Exec channels and session logging")
        # A parsed document (stacks/policy_document.py), so checkov evaluates it.
        IamRolePolicy(self, "TaskExecPolicy", name="ecs-exec", role=self.task_role.id, policy=policy_document(
            self, "TaskExecPolicyDocument", {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "ExecChannels", "Effect": "Allow", "Action": EXEC_TASK_ACTIONS, "Resource": "*"},
                {"Sid": "SessionLogs", "Effect": "Allow",
                 "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                 "Resource": f"{session_logs.log_group.arn}:*"},
                {"Sid": "SessionLogGroups", "Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
                {"Sid": "SessionKey", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                 "Resource": session_logs.key.arn},
            ]}).json)

        self.execution_role = None
        self.task_security_group = None
        self.task_definition = None
        self.service = None
        if not sample_service:
            return
        self.execution_role = IamRole(self, "ExecutionRole", name=f"{name}-ecs-execution",
                                      assume_role_policy=_assume("ecs-tasks.amazonaws.com"),
                                      description="ECS agent: pull the sample image")
        IamRolePolicyAttachment(
            self, "ExecutionPolicy", role=self.execution_role.name,
            policy_arn=f"arn:{part}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")
        self.task_security_group = SecurityGroup(
            self, "TaskSecurityGroup", name=f"{name}-ecs-tasks", vpc_id=network.vpc.id,
            description="ECS sample tasks: no ingress; HTTPS out for ECS Exec and image pulls",
            tags={"Name": f"{name}-ecs-tasks"})
        SecurityGroupRule(self, "TaskEgressHttps", type="egress", security_group_id=self.task_security_group.id,
                          protocol="tcp", from_port=443, to_port=443, cidr_blocks=["0.0.0.0/0"],
                          description="ECS Exec (ssmmessages) and image registry")
        network.allow_endpoint_clients("IngressHttpsFromEcsTasks", client=self.task_security_group,
                                       description="HTTPS from ECS tasks (ECS Exec)")
        container = {
            "name": SAMPLE_CONTAINER,
            "image": SAMPLE_IMAGE,
            "essential": True,
            "command": ["sleep", "infinity"],
            # ECS Exec recommends an init process so exec'd shells are reaped.
            "linuxParameters": {"initProcessEnabled": True},
            "readonlyRootFilesystem": False,
        }
        self.task_definition = EcsTaskDefinition(
            self, "SampleTask", family=f"{name}-sample", requires_compatibilities=["FARGATE"],
            network_mode="awsvpc", cpu="256", memory="512", task_role_arn=self.task_role.arn,
            execution_role_arn=self.execution_role.arn, container_definitions=json.dumps([container]),
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "ARM64"})
        self.service = EcsService(
            self, "SampleService", name=f"{name}-sample", cluster=self.cluster.arn,
            task_definition=self.task_definition.arn, desired_count=1, launch_type="FARGATE",
            platform_version="LATEST", enable_execute_command=True,
            network_configuration=EcsServiceNetworkConfiguration(
                subnets=[s.id for s in network.private_subnets],
                security_groups=[self.task_security_group.id], assign_public_ip=False))
