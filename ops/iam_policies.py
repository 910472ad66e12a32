"""Identity policies that live outside the stack: the deployer's, and what an engineer needs to assume roles.

On AWS both belong to the account's own identity set-up (an SSO permission set, a CI role); bastionless
does not create them, but the sandbox does, from these documents, so deploy runs as a deployer that holds
exactly this and no more, and developers reach the stack's roles only through sts:AssumeRole. The stack's
own roles (developer, auditor, relay): stacks/policies.py and stacks/relay.py.
"""

from __future__ import annotations

from typing import Any


def port_document_name(stack_name: str) -> str:
    """The env's Session document that forwards to its database only (stacks/access.py creates it)."""
    return f"{stack_name}-database"


def target_document_name(stack_name: str, target: str) -> str:
    """The Session document that forwards to one extra target of the env ([[targets]], stacks/access.py)."""
    return f"{stack_name}-target-{target}"


def port_document_content(*, host: str, port: str, what: str = "this environment's database") -> dict[str, Any]:
    """A Session document of type Port whose host and port are fixed: the caller chooses only its local port.

    Session Manager rejects parameters a document does not declare, so StartSession with this document
    cannot be pointed anywhere else (169.254.169.254, another host in the VPC, the internet through NAT).
    """
    return {
        "schemaVersion": "1.0",
        "description": f"Port forwarding to {what} only (bastionless)",
        "sessionType": "Port",
        "parameters": {
            "localPortNumber": {"type": "String", "description": "Port on the client (0: any free port)",
                                "allowedPattern": "^([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                                                  "|655[0-2][0-9]|6553[0-5])$",
                                "default": "0"},
        },
        "properties": {"type": "LocalPortForwarding", "host": host, "portNumber": port,
                       "localPortNumber": "{{ localPortNumber }}"},
    }


# Everything the stack creates is named bastionless-<env>...; the deployer may touch IAM only there.
STACK_PREFIX = "bastionless-"


def deployer_policy(*, account_id: str, partition: str = "aws") -> dict[str, Any]:
    """terraform plan/apply/destroy of the stack, and the relay's on-call tasks (restart, replace, revoke).

    The services the stack is made of are allowed whole (their resources are created with generated ids,
    so there is nothing stable to scope to before they exist); IAM, the one service that could grant
    more than the stack, is limited to the stack's own roles and instance profiles.
    """
    iam = f"arn:{partition}:iam::{account_id}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "StackServices", "Effect": "Allow",
         "Action": ["ec2:*", "rds:*", "kms:*", "logs:*", "ssm:*", "ecs:*", "secretsmanager:*",
                    "cloudwatch:*", "sns:*", "sts:GetCallerIdentity"],
         "Resource": "*"},
        {"Sid": "StackRolesOnly", "Effect": "Allow", "Action": "iam:*",
         "Resource": [f"{iam}:role/{STACK_PREFIX}*", f"{iam}:instance-profile/{STACK_PREFIX}*",
                      f"{iam}:policy/{STACK_PREFIX}*"]},
        {"Sid": "ReadAwsManagedPolicies", "Effect": "Allow",
         "Action": ["iam:GetPolicy", "iam:GetPolicyVersion", "iam:ListPolicyVersions"],
         "Resource": f"arn:{partition}:iam::aws:policy/*"},
        {"Sid": "ServiceLinkedRoles", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
         "Resource": f"{iam}:role/aws-service-role/*"},
    ]}


def engineer_policy(*, account_id: str, partition: str = "aws") -> dict[str, Any]:
    """A person: nothing but assuming the stacks' developer, auditor and break-glass roles (their trust
    policies decide; break-glass's asks for MFA)."""
    roles = [f"arn:{partition}:iam::{account_id}:role/{STACK_PREFIX}*-developer",
             f"arn:{partition}:iam::{account_id}:role/{STACK_PREFIX}*-auditor",
             f"arn:{partition}:iam::{account_id}:role/{STACK_PREFIX}*-break-glass"]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AssumeBastionlessRoles", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": roles},
    ]}
