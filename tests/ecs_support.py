"""A healthy environment for doctor and ecs-shell, built with boto3 in a moto server of its own.

What `invoke sandbox up` deploys with Terraform, made here directly with the same names (ops.facts),
so these tests run before and without the sandbox manager: moto over HTTP as AWS, the local
Session Manager endpoint (in a thread) for SSM/ECS Exec, and the sandbox env file `envs/sandbox.toml`.
The `world` fixture is in tests/ecs_fixtures.py (`pytest_plugins = ["tests.ecs_fixtures"]`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from ops.config import EnvConfig
from ops.facts import ECS_TASKS_FILE, relay_tags
from tests.ssm_support import EndpointThread, relay_image, tag_list

ENV = "sandbox"
REGION = "us-east-1"
ACCOUNT = "123456789012"
TASK_IDS = ("a1b2c3d4e5f60718293a4b5c6d7e8f90", "0f9e8d7c6b5a49382716059483726150")


def aws(service: str, url: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@dataclass
class EcsWorld:
    cfg: EnvConfig
    moto_url: str
    endpoint: EndpointThread
    state_dir: Path
    ids: dict[str, str] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def moto(self, service: str) -> Any:
        return aws(service, self.moto_url)

    def write_tasks(self, tasks: list[dict[str, Any]] | None = None) -> None:
        (self.state_dir / ECS_TASKS_FILE).write_text(json.dumps({"tasks": self.tasks if tasks is None else tasks}))


def sandbox_task(*, cluster: str, service: str, task_def: str, tid: str, **overrides: Any) -> dict[str, Any]:
    """A task as DescribeTasks returns it (moto 5.2.5 cannot run awsvpc tasks, so the endpoint serves these)."""
    task: dict[str, Any] = {
        "taskArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{cluster}/{tid}",
        "clusterArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}",
        "taskDefinitionArn": task_def, "lastStatus": "RUNNING", "desiredStatus": "RUNNING",
        "launchType": "FARGATE", "platformVersion": "1.4.0", "platformFamily": "Linux",
        "enableExecuteCommand": True, "group": f"service:{service}", "availabilityZone": f"{REGION}a",
        "startedAt": 1_790_000_000.0,
        "containers": [{"name": "app", "containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/{cluster}/{tid}/1",
                        "runtimeId": f"{tid}-app", "lastStatus": "RUNNING",
                        "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": "RUNNING"}]}],
    }
    task.update(overrides)
    return task


def _role(iam: Any, name: str, service: str, policy: dict[str, Any]) -> str:
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": service},
                                                     "Action": "sts:AssumeRole"}]}
    arn = str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])
    iam.put_role_policy(RoleName=name, PolicyName="inline", PolicyDocument=json.dumps(policy))
    return arn


def build_world(moto_url: str, cfg: EnvConfig) -> dict[str, str]:
    stack = cfg.stack_name
    ec2, iam, rds, kms = (aws(s, moto_url) for s in ("ec2", "iam", "rds", "kms"))
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    # As stacks/network.py sets it: endpoints' private DNS needs host names on (DNS support is on by default).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    private = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.4.0/24",
                                AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    isolated = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.40.{8 + i}.0/24",
                                  AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"] for i, az in enumerate("ab")]
    relay_sg = ec2.create_security_group(GroupName=f"{stack}-relay", Description="relay", VpcId=vpc)["GroupId"]
    db_sg = ec2.create_security_group(GroupName=f"{stack}-db", Description="db", VpcId=vpc)["GroupId"]
    ep_sg = ec2.create_security_group(GroupName=f"{stack}-endpoints", Description="endpoints", VpcId=vpc)["GroupId"]
    for group, port in ((db_sg, 5432), (ep_sg, 443)):
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": port, "ToPort": port, "UserIdGroupPairs": [{"GroupId": relay_sg}]}])
    endpoints = {svc: ec2.create_vpc_endpoint(
        VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.{svc}", VpcEndpointType="Interface", SubnetIds=[private],
        SecurityGroupIds=[ep_sg], PrivateDnsEnabled=True)["VpcEndpoint"]["VpcEndpointId"]
        for svc in ("ssm", "ssmmessages", "ec2messages", "kms", "logs")}

    key = kms.create_key(Description="sessions")["KeyMetadata"]
    kms.create_alias(AliasName=f"alias/{stack}-sessions", TargetKeyId=key["KeyId"])
    relay_role = _role(iam, f"{stack}-relay", "ec2.amazonaws.com", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:*", "ec2messages:*"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key["Arn"]}]})
    iam.create_instance_profile(InstanceProfileName=f"{stack}-relay")
    iam.add_role_to_instance_profile(InstanceProfileName=f"{stack}-relay", RoleName=f"{stack}-relay")
    prefs = {"schemaVersion": "1.0", "description": "Session Manager preferences", "sessionType": "Standard_Stream",
             "inputs": {"kmsKeyId": key["Arn"], "cloudWatchLogGroupName": f"/bastionless/{cfg.name}/sessions",
                        # The rest of what stacks/session_logs.py deploys (doctor compares them).
                        "cloudWatchEncryptionEnabled": True, "cloudWatchStreamingEnabled": True,
                        "runAsEnabled": False, "idleSessionTimeout": str(cfg.session.idle_timeout_minutes),
                        "maxSessionDuration": str(cfg.session.max_session_minutes)}}
    aws("ssm", moto_url).create_document(Name="SSM-SessionManagerRunShell", Content=json.dumps(prefs),
                                         DocumentType="Session", DocumentFormat="JSON")

    image = relay_image(ec2)
    relay = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t4g.nano",
        # As the Terraform provider launches it (associate_public_ip_address = false): an interface spec.
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": private, "Groups": [relay_sg],
                            "AssociatePublicIpAddress": False}],
        IamInstanceProfile={"Name": f"{stack}-relay"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(relay_tags(stack_name=stack, env=cfg.name))}],
    )["Instances"][0]["InstanceId"]

    rds.create_db_subnet_group(DBSubnetGroupName=stack, DBSubnetGroupDescription="db", SubnetIds=isolated)
    db = rds.create_db_instance(
        DBInstanceIdentifier=stack, Engine="postgres", DBInstanceClass="db.t4g.small", AllocatedStorage=20,
        DBName=cfg.database.name, MasterUsername=cfg.database.username, ManageMasterUserPassword=True,
        VpcSecurityGroupIds=[db_sg], DBSubnetGroupName=stack,
        CACertificateIdentifier=cfg.database.ca_cert_identifier)["DBInstance"]

    logs = aws("logs", moto_url)
    log_group = f"/bastionless/{cfg.name}/sessions"
    logs.create_log_group(logGroupName=log_group)
    task_role = _role(iam, f"{stack}-ecs-task", "ecs-tasks.amazonaws.com", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                                       "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents",
                                       "logs:DescribeLogGroups"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": key["Arn"]}]})
    ecs = aws("ecs", moto_url)
    ecs.create_cluster(clusterName=stack, configuration={"executeCommandConfiguration": {
        "kmsKeyId": key["Arn"], "logging": "OVERRIDE",
        "logConfiguration": {"cloudWatchLogGroupName": log_group, "cloudWatchEncryptionEnabled": True}}})
    task_def = ecs.register_task_definition(
        family=f"{stack}-sample", taskRoleArn=task_role, networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
        cpu="256", memory="512", containerDefinitions=[{
            "name": "app", "image": "public.ecr.aws/docker/library/busybox:stable", "essential": True,
            "linuxParameters": {"initProcessEnabled": True}, "readonlyRootFilesystem": False}],
    )["taskDefinition"]["taskDefinitionArn"]
    service = f"{stack}-sample"
    ecs.create_service(cluster=stack, serviceName=service, taskDefinition=task_def, desiredCount=1,
                       launchType="FARGATE", platformVersion="1.4.0", enableExecuteCommand=True,
                       networkConfiguration={"awsvpcConfiguration": {"subnets": [private],
                                                                     "securityGroups": [relay_sg]}})
    # moto drops enableExecuteCommand on CreateService but keeps it from UpdateService.
    ecs.update_service(cluster=stack, service=service, enableExecuteCommand=True)
    return {"vpc": vpc, "relay": relay, "relay_sg": relay_sg, "db_sg": db_sg, "ep_sg": ep_sg, "key": key["KeyId"],
            "secret": db["MasterUserSecret"]["SecretArn"], "task_def": task_def, "service": service,
            "cluster": stack, "relay_role": relay_role, "task_role": task_role,
            **{f"ep_{k}": v for k, v in endpoints.items()}}
