"""Who may do what: the developer and auditor roles, and the Session Manager document that fixes where a
developer's port forwarding goes (the env's database, nothing else)."""

from __future__ import annotations

import json

from cdktf import Token
from cdktf_cdktf_provider_aws.data_aws_iam_policy_document import DataAwsIamPolicyDocument
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.ssm_document import SsmDocument
from constructs import Construct

from ops.iam_policies import port_document_content, port_document_name, target_document_name
from ops.targets import Target
from stacks.database import Database
from stacks.ecs_exec import EcsExec
from stacks.policies import auditor_policy, developer_policy, trust_policy
from stacks.policy_document import policy_document
from stacks.relay import Relay
from stacks.session_logs import SessionLogs


class Access(Construct):
    """The developer role, the auditor role, and the env's port-forwarding document."""

    role: IamRole
    policy: IamRolePolicy
    policy_json: str
    policy_document: DataAwsIamPolicyDocument
    auditor_role: IamRole
    auditor_policy: IamRolePolicy
    port_document: SsmDocument
    target_documents: dict[str, SsmDocument]

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, account_id: str,
                 principals: tuple[str, ...], require_mfa: bool, relay: Relay, database: Database,
                 session_logs: SessionLogs, ecs: EcsExec | None = None, targets: tuple[Target, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        trust = json.dumps(trust_policy(principals=principals, require_mfa=require_mfa, region=region,
                                        account_id=account_id))
        # Developers connect to the database as the DB user of their own db_user tag (DbConnect).
        developer_trust = json.dumps(trust_policy(principals=principals, require_mfa=require_mfa, region=region,
                                                  account_id=account_id, tag_session=True))
        self.port_document = SsmDocument(
            self, "DatabasePortDocument", name=port_document_name(name), document_type="Session",
            document_format="JSON",
            content=json.dumps(port_document_content(host=database.instance.address,
                                                     port=Token.as_string(database.instance.port))))
        self.target_documents = {
            t.name: SsmDocument(self, f"TargetPortDocument{t.pascal}",
                                name=target_document_name(name, t.name), document_type="Session",
                                document_format="JSON",
                                content=json.dumps(port_document_content(host=t.host, port=str(t.port),
                                                                         what=f"the {t.name} target")))
            for t in targets}
        self.role = IamRole(self, "Role", name=f"{name}-developer", assume_role_policy=developer_trust,
                            description="Developers: port forwarding to the database through the relay",
                            max_session_duration=3600 * 4)
        self.policy_json = json.dumps(developer_policy(
            region=region, account_id=account_id, relay_instance_id=relay.instance.id,
            db_secret_arn=database.instance.master_user_secret.get(0).secret_arn,
            db_identifier=database.instance.identifier, port_document=self.port_document.name,
            session_key_arn=session_logs.key.arn,
            ecs_cluster_arn=ecs.cluster.arn if ecs else None, ecs_cluster_name=ecs.cluster.name if ecs else None,
            target_documents=tuple(d.name for d in self.target_documents.values())))
        # A parsed document, not a JSON string: checkov evaluates every statement (stacks/policy_document.py).
        self.policy_document = policy_document(self, "PolicyDocument", json.loads(self.policy_json))
        self.policy = IamRolePolicy(self, "Policy", name="developer-access", role=self.role.id,
                                    policy=self.policy_document.json)
        self.auditor_role = IamRole(self, "AuditorRole", name=f"{name}-auditor", assume_role_policy=trust,
                                    description="Auditors: CloudTrail events of Session Manager (invoke audit)",
                                    max_session_duration=3600)
        auditor_document = policy_document(self, "AuditorPolicyDocument",
                                           auditor_policy(region=region, account_id=account_id))
        self.auditor_policy = IamRolePolicy(self, "AuditorPolicy", name="auditor-access", role=self.auditor_role.id,
                                            policy=auditor_document.json)
