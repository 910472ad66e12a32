"""Per-person database identities in IAM: who may mint a login for which DB user, and the break-glass role.

- `DbConnect`: a managed policy allowing `rds-db:connect` only as the DB user named by the caller's own
  principal tag `db_user` (ABAC). One statement serves any number of people, so it never approaches the
  inline-policy size limit; the tag comes from Identity Center (attributes for access control) or from
  the IAM user's tags, never from the person. Attached to the developer role; attach the same policy to
  Identity Center permission sets or IAM groups to use it without the developer role.
- `BreakGlass`: a separate role, MFA required (and at most an hour old), that can read the RDS master
  secret besides what a developer can do. Only it can act as the master user.
"""

from __future__ import annotations

import json
from typing import Any

from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from constructs import Construct

from ops.facts import DB_USER_TAG, partition
from stacks.access import Access
from stacks.database import Database
from stacks.policies import DB_USER_VARIABLE, tag_session_trust_statement, trust_policy
from stacks.policy_document import policy_document

# The developer role's trust takes tag_session_trust_statement (stacks/policies.py, beside the other trust).
__all__ = ["DB_USER_TAG", "DB_USER_VARIABLE", "BreakGlass", "DbConnect", "connect_policy",
           "tag_session_trust_statement"]
MFA_MAX_AGE_SECONDS = 3600


def connect_policy(*, region: str, account_id: str, db_resource_id: str) -> dict[str, Any]:
    part = partition(region)
    return {"Version": "2012-10-17", "Statement": [{
        # With no db_user tag the variable has no value and the statement matches nothing: no tag, no login.
        "Sid": "ConnectAsYourOwnDbUserOnly",
        "Effect": "Allow",
        "Action": "rds-db:connect",
        "Resource": f"arn:{part}:rds-db:{region}:{account_id}:dbuser:{db_resource_id}/{DB_USER_VARIABLE}",
    }]}


def break_glass_statements(*, db_secret_arn: str) -> list[dict[str, Any]]:
    return [{"Sid": "MasterSecretBreakGlassOnly", "Effect": "Allow",
             "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
             "Resource": db_secret_arn}]


class DbConnect(Construct):
    """`rds-db:connect` as your own DB user (principal tag `db_user`), attached to the developer role."""

    policy: IamPolicy
    developer_attachment: IamRolePolicyAttachment

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, account_id: str,
                 database: Database, access: Access) -> None:
        super().__init__(scope, construct_id)
        self.policy = IamPolicy(self, "Policy", name=f"{name}-db-connect",
                                description="rds-db:connect only as the DB user in your own db_user principal tag",
                                policy=json.dumps(connect_policy(region=region, account_id=account_id,
                                                                 db_resource_id=database.instance.resource_id)))
        self.developer_attachment = IamRolePolicyAttachment(self, "Developer", role=access.role.name,
                                                            policy_arn=self.policy.arn)


class BreakGlass(Construct):
    """The only role that reads the master secret: assumable with MFA (under an hour old) only."""

    role: IamRole
    policy: IamRolePolicy

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, account_id: str,
                 principals: tuple[str, ...], database: Database, access: Access) -> None:
        super().__init__(scope, construct_id)
        # IAM users with MFA under an hour old; SSO permission-set roles (their MFA is the IdP's sign-in),
        # which an MFA condition would lock out, as for the developer role (stacks/policies.trust_policy).
        trust = trust_policy(principals=principals, require_mfa=True, region=region, account_id=account_id,
                             mfa_max_age=MFA_MAX_AGE_SECONDS)
        self.role = IamRole(self, "Role", name=f"{name}-break-glass", assume_role_policy=json.dumps(trust),
                            description="Break-glass: the database master user (MFA); every use is in CloudTrail",
                            max_session_duration=3600)
        # What a developer may do (open the tunnel), plus the master secret.
        developer = json.loads(access.policy_json)["Statement"]
        secret = database.instance.master_user_secret.get(0).secret_arn
        document = policy_document(self, "PolicyDocument", {
            "Version": "2012-10-17", "Statement": [*developer, *break_glass_statements(db_secret_arn=secret)]})
        self.policy = IamRolePolicy(self, "Policy", name="break-glass", role=self.role.id, policy=document.json)
