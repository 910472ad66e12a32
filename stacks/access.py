"""The developer role: open port-forwarding sessions to the relay, read the database secret, nothing more."""

from __future__ import annotations

import json
from typing import Any

from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from constructs import Construct

from ops.facts import PORT_DOCUMENT, partition
from stacks.database import Database
from stacks.ecs_exec import EcsExec
from stacks.relay import Relay
from stacks.session_logs import SessionLogs

# A literal IAM policy variable; `$$` stops Terraform from reading `${...}` as its own interpolation.
AWS_USERID = "$${aws:userid}"


def developer_policy(*, region: str, account_id: str, relay_instance_id: str, db_secret_arn: str,
                     session_key_arn: str, ecs_cluster_arn: str | None, ecs_cluster_name: str | None) -> dict[str, Any]:
    part = partition(region)
    statements: list[dict[str, Any]] = [
        {
            "Sid": "StartPortForwardingToTheRelayOnly",
            "Effect": "Allow",
            "Action": "ssm:StartSession",
            "Resource": [
                f"arn:{part}:ec2:{region}:{account_id}:instance/{relay_instance_id}",
                f"arn:{part}:ssm:{region}::document/{PORT_DOCUMENT}",
            ],
            # Makes IAM check the document too, so the default shell document is not usable on the relay.
            "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
        },
        {
            # `session/${aws:username}-*` only matches IAM users. Session Manager tags each session with
            # the caller's user id, which for an assumed role is "<role id>:<session name>": this form
            # works for IAM users, assumed roles and federated users alike (AWS Session Manager docs,
            # "Allow users to end only sessions they started").
            "Sid": "EndAndResumeOwnSessionsOnly",
            "Effect": "Allow",
            "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
            "Resource": f"arn:{part}:ssm:*:*:session/*",
            "Condition": {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": [AWS_USERID]}},
        },
        # No master-secret read: developers log in as themselves (rds-db:connect, stacks/db_identity.py);
        # only the break-glass role reads the master secret.
        {
            # Encrypted sessions: the client asks KMS for the session data key.
            "Sid": "SessionEncryptionKey",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": session_key_arn,
        },
        {
            # Read-only calls the tasks make (discovery, doctor, audit); none supports resource scoping.
            "Sid": "ReadOnlyDescribes",
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstances", "ssm:DescribeInstanceInformation", "ssm:DescribeSessions",
                       "ssm:GetConnectionStatus", "rds:DescribeDBInstances", "cloudtrail:LookupEvents",
                       "sts:GetCallerIdentity"],
            "Resource": "*",
        },
    ]
    if ecs_cluster_arn is not None and ecs_cluster_name is not None:
        statements += [
            {
                "Sid": "EcsExecInTheClusterOnly",
                "Effect": "Allow",
                "Action": "ecs:ExecuteCommand",
                "Resource": [ecs_cluster_arn, f"arn:{part}:ecs:{region}:{account_id}:task/{ecs_cluster_name}/*"],
            },
            {
                "Sid": "EcsReadInTheClusterOnly",
                "Effect": "Allow",
                "Action": ["ecs:ListTasks", "ecs:DescribeTasks", "ecs:ListServices", "ecs:DescribeServices"],
                "Resource": "*",
                "Condition": {"ArnEquals": {"ecs:cluster": ecs_cluster_arn}},
            },
            {
                "Sid": "EcsDescribeCluster",
                "Effect": "Allow",
                "Action": "ecs:DescribeClusters",
                "Resource": ecs_cluster_arn,
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


class Access(Construct):
    """A developer role assumable by the configured principals (optionally with MFA), with an inline policy."""

    role: IamRole
    policy: IamRolePolicy
    policy_json: str

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, account_id: str,
                 principals: tuple[str, ...], require_mfa: bool, relay: Relay, database: Database,
                 session_logs: SessionLogs, ecs: EcsExec | None = None) -> None:
        super().__init__(scope, construct_id)
        trust: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": list(principals)},
                                 "Action": "sts:AssumeRole"}
        if require_mfa:
            trust["Condition"] = {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
        if not principals:
            # Nobody configured: a trust policy must name someone, so only the account itself.
            trust["Principal"] = {"AWS": f"arn:{partition(region)}:iam::{account_id}:root"}
        self.role = IamRole(self, "Role", name=f"{name}-developer",
                            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
                            description="Developers: port forwarding to the database through the relay",
                            max_session_duration=3600 * 4)
        self.policy_json = json.dumps(developer_policy(
            region=region, account_id=account_id, relay_instance_id=relay.instance.id,
            db_secret_arn=database.instance.master_user_secret.get(0).secret_arn,
            session_key_arn=session_logs.key.arn,
            ecs_cluster_arn=ecs.cluster.arn if ecs else None, ecs_cluster_name=ecs.cluster.name if ecs else None))
        self.policy = IamRolePolicy(self, "Policy", name="developer-access", role=self.role.id,
                                    policy=self.policy_json)
