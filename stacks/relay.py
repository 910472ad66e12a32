"""The relay: a tiny private EC2 instance reachable only through Session Manager, forwarding to the database."""

from __future__ import annotations

import json
from typing import Any

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
from cdktf_cdktf_provider_aws.iam_instance_profile import IamInstanceProfile
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.instance import Instance, InstanceMetadataOptions, InstanceRootBlockDevice
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.security_group_rule import SecurityGroupRule
from constructs import Construct

from ops.facts import partition, relay_tags
from ops.targets import Target
from stacks.network import Network
from stacks.policy_document import policy_document

AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"


def relay_policy(*, session_key_arn: str, region: str, patching: bool) -> dict[str, Any]:
    """The relay's agent, line by line: what Session Manager needs; Run Command and patching only when the
    env patches the relay (`[patching] enabled`, on by default); never Parameter Store (AWS docs, "Create a
    custom IAM role for Session Manager")."""
    session_manager = [
        # The agent registers and keeps its ping/inventory fresh (PingStatus Online).
        {"Sid": "RegisterWithSystemsManager", "Effect": "Allow", "Action": "ssm:UpdateInstanceInformation",
         "Resource": f"arn:{partition(region)}:ec2:{region}:*:instance/*"},
        # The control channel (session start/stop) and the data channels (the tunnels themselves).
        {"Sid": "SessionChannels", "Effect": "Allow",
         "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
         "Resource": "*"},
        # Encrypted sessions: the agent decrypts the session data key with the preferences' KMS key.
        {"Sid": "SessionEncryption", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": session_key_arn},
    ]
    patches = [
        # Patching (stacks/patching.py: AWS-RunPatchBaseline in a maintenance window, the daily scan and the
        # agent-update association) reaches the agent as Run Command: its message channel, then association
        # and patch-state reporting about this instance, and reading the AWS-owned documents it runs.
        # Without these the relay is never patched.
        {"Sid": "RunCommandChannel", "Effect": "Allow",
         "Action": ["ec2messages:GetMessages", "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage",
                    "ec2messages:FailMessage", "ec2messages:GetEndpoint", "ec2messages:SendReply"],
         "Resource": "*"},
        {"Sid": "PatchStateOfThisInstance", "Effect": "Allow",
         "Action": ["ssm:UpdateInstanceAssociationStatus", "ssm:ListInstanceAssociations", "ssm:PutInventory",
                    "ssm:PutComplianceItems"],
         "Resource": f"arn:{partition(region)}:ec2:{region}:*:instance/*"},
        {"Sid": "ListWhatToRun", "Effect": "Allow",
         "Action": ["ssm:ListAssociations", "ssm:GetDeployablePatchSnapshotForInstance"],
         "Resource": "*"},
        {"Sid": "ReadAwsDocuments", "Effect": "Allow", "Action": ["ssm:GetDocument", "ssm:DescribeDocument"],
         "Resource": f"arn:{partition(region)}:ssm:{region}::document/AWS-*"},
    ]
    return {"Version": "2012-10-17", "Statement": session_manager + (patches if patching else [])}

class Relay(Construct):
    """Security group with no ingress, SSM-managed role, IMDSv2-only instance in a private subnet."""

    security_group: SecurityGroup
    role: IamRole
    instance_profile: IamInstanceProfile
    ami: DataAwsSsmParameter
    instance: Instance

    def __init__(self, scope: Construct, construct_id: str, *, name: str, env: str, region: str,
                 network: Network, session_key: KmsKey, instance_type: str, root_volume_gb: int,
                 patching: bool, targets: tuple[Target, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        # No ingress at all: Session Manager connections are outbound from the agent.
        self.security_group = SecurityGroup(
            self, "SecurityGroup", name=f"{name}-relay", vpc_id=network.vpc.id,
            description="SSM relay: no ingress; HTTPS to Systems Manager and PostgreSQL to the database only",
            tags={"Name": f"{name}-relay"})
        https = {"type": "egress", "security_group_id": self.security_group.id, "protocol": "tcp",
                 "from_port": 443, "to_port": 443}
        if network.endpoint_security_group is not None:
            SecurityGroupRule(self, "EgressHttpsToEndpoints", **https,  # type: ignore[arg-type]
                              source_security_group_id=network.endpoint_security_group.id,
                              description="Systems Manager interface endpoints")
            # The S3 gateway endpoint has no security group: reach it by its managed prefix list.
            assert network.s3_endpoint is not None
            SecurityGroupRule(self, "EgressHttpsToS3", **https,  # type: ignore[arg-type]
                              prefix_list_ids=[network.s3_endpoint.prefix_list_id],
                              description="S3 gateway endpoint: Amazon Linux package repositories")
            network.allow_endpoint_clients("IngressHttpsFromRelay", client=self.security_group,
                                           description="HTTPS from the relay")
        for target in targets:
            # An extra target the env declares ([[targets]]): its port, to where it lives, and nothing more.
            SecurityGroupRule(self, f"EgressTo{target.pascal}", type="egress",
                              security_group_id=self.security_group.id, protocol="tcp", from_port=target.port,
                              to_port=target.port, cidr_blocks=[target.cidr],
                              description=f"target {target.name}: {target.host}:{target.port}")
        if network.endpoint_security_group is None:
            SecurityGroupRule(self, "EgressHttpsAnywhere", **https,  # type: ignore[arg-type]
                              cidr_blocks=["0.0.0.0/0"],
                              description="Systems Manager and package repositories through the NAT gateway")

        assume = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        self.role = IamRole(self, "Role", name=f"{name}-relay", assume_role_policy=json.dumps(assume),
                            description="SSM relay instance")
        # Instead of AmazonSSMManagedInstanceCore (which also grants ssm:GetParameter(s) on every parameter
        # of the account, Run Command's ec2messages and patching's ssm:*Association*): only what the agent
        # needs for Session Manager.
        document = policy_document(self, "SessionManagerPolicyDocument",
                                   relay_policy(session_key_arn=session_key.arn, region=region,
                                                patching=patching))
        IamRolePolicy(self, "SessionManagerPolicy", name="session-manager-agent", role=self.role.id,
                      policy=document.json)
        self.instance_profile = IamInstanceProfile(self, "InstanceProfile", name=f"{name}-relay",
                                                   role=self.role.name)

        self.ami = DataAwsSsmParameter(self, "Ami", name=AMI_PARAMETER)
        self.instance = Instance(
            self, "Instance",
            ami=self.ami.value,
            instance_type=instance_type,
            subnet_id=network.private_subnets[0].id,
            vpc_security_group_ids=[self.security_group.id],
            iam_instance_profile=self.instance_profile.name,
            associate_public_ip_address=False,
            ebs_optimized=True,
            metadata_options=InstanceMetadataOptions(http_endpoint="enabled", http_tokens="required",
                                                     http_put_response_hop_limit=1),
            root_block_device=InstanceRootBlockDevice(volume_type="gp3", volume_size=root_volume_gb,
                                                      encrypted=True, delete_on_termination=True),
            tags=relay_tags(stack_name=name, env=env),
        )
        # A new AMI every few weeks must not replace the relay under open tunnels; patching is in place.
        self.instance.lifecycle = TerraformResourceLifecycle(ignore_changes=["ami"])
