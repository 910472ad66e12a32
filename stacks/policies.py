"""The stack's IAM documents as plain data: the developer and auditor roles' policies and the roles' trust.

No constructs here (stacks/access.py and stacks/db_identity.py build them into the stack), so the tests and
the sandbox's IAM checks read the very documents the stack deploys without starting cdktf's jsii runtime.
"""

from __future__ import annotations

from typing import Any

from ops.facts import DB_USER_TAG, PORT_DOCUMENT, PREFERENCES_DOCUMENT, partition

# AWS's generic document forwards to any host and port the caller names: admins only, never developers.
PORT_FORWARD_DOCUMENT = PORT_DOCUMENT
# A literal IAM policy variable; `$$` stops Terraform from reading `${...}` as its own interpolation.
AWS_USERID = "$${aws:userid}"
# The caller's own DB user (stacks/db_identity.py: rds-db:connect; here: the session tag they may pass on).
DB_USER_VARIABLE = f"$${{aws:PrincipalTag/{DB_USER_TAG}}}"


def tag_session_trust_statement(principals: list[str] | str) -> dict[str, Any]:
    """For a role people assume (role chaining from Identity Center or from IAM users): it may receive the
    `db_user` session tag only with the value the caller itself carries, so nobody can tag themselves
    as someone else. Add it to that role's trust policy next to its sts:AssumeRole statement."""
    return {"Sid": "CarryYourOwnDbUserTagOnly", "Effect": "Allow", "Principal": {"AWS": principals},
            "Action": "sts:TagSession",
            "Condition": {"StringEquals": {f"aws:RequestTag/{DB_USER_TAG}": DB_USER_VARIABLE},
                          "ForAllValues:StringEquals": {"aws:TagKeys": [DB_USER_TAG]}}}


def developer_policy(*, region: str, account_id: str, relay_instance_id: str, db_secret_arn: str,
                     db_identifier: str, port_document: str, session_key_arn: str, ecs_cluster_arn: str | None,
                     ecs_cluster_name: str | None, target_documents: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every developer task (tunnel, psql, migrate, dbeaver, ecs-shell, doctor, sessions) and nothing more.

    The sandbox runs those tasks as this role with the policy enforced (ops.sandbox.moto_iam), so a
    missing permission fails a test, and tests/test_iam_sandbox.py shows a task failing without one.
    """
    part = partition(region)
    relay_arn = f"arn:{part}:ec2:{region}:{account_id}:instance/{relay_instance_id}"
    document_arn = f"arn:{part}:ssm:{region}:{account_id}:document/{port_document}"
    # The env's extra targets ([[targets]]): each a document of its own with host and port fixed, like this one.
    target_arns = [f"arn:{part}:ssm:{region}:{account_id}:document/{d}" for d in target_documents]
    statements: list[dict[str, Any]] = [
        {
            # Only the env's own document: its host and port are fixed to the database. The generic
            # AWS-StartPortForwardingSessionToRemoteHost would make the relay an open proxy.
            "Sid": "StartPortForwardingToTheDatabaseOnly",
            "Effect": "Allow",
            "Action": "ssm:StartSession",
            "Resource": [relay_arn, document_arn, *target_arns],
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
            # Encrypted sessions: the client asks KMS for the session data key (the agent decrypts it, so
            # no kms:Decrypt here); doctor reads the key's metadata.
            "Sid": "SessionEncryptionKey",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:DescribeKey"],
            "Resource": session_key_arn,
        },
        {
            # Discovery and doctor, scoped where the action supports it.
            "Sid": "ScopedReads",
            "Effect": "Allow",
            "Action": ["rds:DescribeDBInstances"],
            "Resource": f"arn:{part}:rds:{region}:{account_id}:db:{db_identifier}",
        },
        {
            # doctor: whether the relay is connected and patched.
            "Sid": "RelayConnectionStatus",
            "Effect": "Allow",
            "Action": ["ssm:GetConnectionStatus", "ssm:DescribeInstancePatchStates"],
            "Resource": relay_arn,
        },
        {
            # doctor: the VPCs' DNS attributes (the interface endpoints' private DNS needs them on).
            "Sid": "VpcDnsAttributes",
            "Effect": "Allow",
            "Action": ["ec2:DescribeVpcAttribute"],
            "Resource": f"arn:{part}:ec2:{region}:{account_id}:vpc/*",
        },
        {
            # doctor: the session preferences (log group, KMS key) and the env's port document.
            "Sid": "SessionDocuments",
            "Effect": "Allow",
            "Action": ["ssm:GetDocument"],
            "Resource": [f"arn:{part}:ssm:{region}:{account_id}:document/{PREFERENCES_DOCUMENT}", document_arn],
        },
        {
            # doctor simulates this role and reads the stack's roles (relay, ECS task) to check them.
            "Sid": "ReadTheStacksRoles",
            "Effect": "Allow",
            "Action": ["iam:SimulatePrincipalPolicy", "iam:GetRole", "iam:ListRolePolicies", "iam:GetRolePolicy",
                       "iam:ListAttachedRolePolicies", "iam:GetInstanceProfile", "iam:GetPolicy",
                       "iam:GetPolicyVersion"],
            "Resource": [f"arn:{part}:iam::{account_id}:role/bastionless-*",
                         f"arn:{part}:iam::{account_id}:instance-profile/bastionless-*",
                         f"arn:{part}:iam::{account_id}:policy/bastionless-*"],
        },
        {
            # These actions support no resource-level permissions (AWS service authorization reference).
            "Sid": "ReadOnlyDescribes",
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstances", "ec2:DescribeInstanceStatus", "ec2:DescribeVpcEndpoints",
                       "ec2:DescribeSecurityGroups", "ec2:DescribeRouteTables", "ec2:DescribeSubnets",
                       "rds:DescribeCertificates", "ssm:DescribeInstanceInformation", "ssm:DescribeSessions",
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
                # Each read on the cluster's own tasks, services and container instances; ListServices has no
                # resource type, so only the ecs:cluster condition holds it to the cluster.
                "Sid": "EcsReadInTheClusterOnly",
                "Effect": "Allow",
                "Action": ["ecs:ListTasks", "ecs:DescribeTasks", "ecs:DescribeServices",
                           "ecs:DescribeContainerInstances"],
                "Resource": [f"arn:{part}:ecs:{region}:{account_id}:task/{ecs_cluster_name}/*",
                             f"arn:{part}:ecs:{region}:{account_id}:service/{ecs_cluster_name}/*",
                             f"arn:{part}:ecs:{region}:{account_id}:container-instance/{ecs_cluster_name}/*"],
                "Condition": {"ArnEquals": {"ecs:cluster": ecs_cluster_arn}},
            },
            {
                "Sid": "EcsListServicesInTheClusterOnly",
                "Effect": "Allow",
                "Action": "ecs:ListServices",
                "Resource": "*",
                "Condition": {"ArnEquals": {"ecs:cluster": ecs_cluster_arn}},
            },
            {
                "Sid": "EcsDescribeCluster",
                "Effect": "Allow",
                "Action": "ecs:DescribeClusters",
                "Resource": ecs_cluster_arn,
            },
            {
                # doctor checks the task definition's exec prerequisites; no resource-level permissions.
                "Sid": "EcsTaskDefinitions",
                "Effect": "Allow",
                "Action": ["ecs:DescribeTaskDefinition"],
                "Resource": "*",
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def auditor_policy(*, region: str, account_id: str) -> dict[str, Any]:
    """`invoke audit`: CloudTrail's LookupEvents is account-wide (no resource scoping), so it lives here and
    not with the developers; plus the session history it joins the events with."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadTheTrail", "Effect": "Allow",
         "Action": ["cloudtrail:LookupEvents", "ssm:DescribeSessions", "ec2:DescribeInstances",
                    "sts:GetCallerIdentity"],
         "Resource": "*"},
    ]}


def trust_policy(*, principals: tuple[str, ...], require_mfa: bool, region: str, account_id: str,
                 tag_session: bool = False, mfa_max_age: int | None = None) -> dict[str, Any]:
    """Who may assume a role. MFA is checked where the identity comes from:

    - IAM users (and the account root principal, which stands for them too) carry
      aws:MultiFactorAuthPresent: required with `Bool` (absent for long-term keys = refused);
    - roles (IAM Identity Center permission sets, SAML/OIDC federation) do not carry that key: their MFA
      is enforced by the identity provider at sign-in (Identity Center: "MFA required"), so their
      statement has no MFA condition, which would otherwise lock every SSO user out.

    `tag_session`: the same principals may pass the `db_user` session tag, but only with the value they carry
    themselves (stacks/db_identity.py), so an SSO user's DB user survives role chaining into this role.
    `mfa_max_age`: IAM users' MFA must also be younger than this (seconds); the IdP's sign-in MFA of the
    federated roles is as fresh as their session, which the IdP bounds.
    """
    if not principals:
        # Nobody configured: a trust policy must name someone, so only the account itself.
        principals = (f"arn:{partition(region)}:iam::{account_id}:root",)
    users = [p for p in principals if ":role/" not in p]
    roles = [p for p in principals if ":role/" in p]
    statements: list[dict[str, Any]] = []
    if users:
        stmt: dict[str, Any] = {"Sid": "IamPrincipals", "Effect": "Allow", "Principal": {"AWS": users},
                                "Action": "sts:AssumeRole"}
        if require_mfa:
            stmt["Condition"] = {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
            if mfa_max_age is not None:
                stmt["Condition"]["NumericLessThan"] = {"aws:MultiFactorAuthAge": str(mfa_max_age)}
        statements.append(stmt)
    if roles:
        statements.append({"Sid": "FederatedRoles", "Effect": "Allow", "Principal": {"AWS": roles},
                           "Action": "sts:AssumeRole"})
    if tag_session:
        # AssumeRole with Tags needs sts:TagSession allowed too; the AssumeRole statements above still decide
        # who gets in (and with which MFA), this one only which tag they may bring.
        statements.append(tag_session_trust_statement([*users, *roles]))
    return {"Version": "2012-10-17", "Statement": statements}
