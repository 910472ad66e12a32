"""Session logging: KMS key, encrypted log group and the Session Manager preferences document."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.kms_alias import KmsAlias
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from cdktf_cdktf_provider_aws.ssm_document import SsmDocument
from constructs import Construct

from ops.facts import PREFERENCES_DOCUMENT, partition


def log_group_name(env: str) -> str:
    return f"/bastionless/{env}/sessions"


class SessionLogs(Construct):
    """KMS key (rotated) usable by CloudWatch Logs, the log group, the preferences document.

    With `adopt_existing=True` the preferences document gets a Terraform `import` block: AWS creates
    the document itself the first time someone opens Session Manager preferences in the console,
    and a plain create then fails with DocumentAlreadyExists.
    """

    key: KmsKey
    alias: KmsAlias
    log_group: CloudwatchLogGroup
    preferences: SsmDocument

    def __init__(self, scope: Construct, construct_id: str, *, name: str, env: str, account_id: str, region: str,
                 retention_days: int, idle_timeout_minutes: int, max_session_minutes: int, adopt_existing: bool,
                 sandbox: bool) -> None:
        super().__init__(scope, construct_id)
        part = partition(region)
        group = log_group_name(env)
        group_arn = f"arn:{part}:logs:{region}:{account_id}:log-group:{group}"
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    # Without this the key is unmanageable; IAM policies grant everyone else.
                    "Sid": "AccountAdministers",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:{part}:iam::{account_id}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                {
                    "Sid": "CloudWatchLogsInThisRegion",
                    "Effect": "Allow",
                    "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                    "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                               "kms:Describe*"],
                    "Resource": "*",
                    # Only for our log group, not for any log group in the account.
                    "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": group_arn}},
                },
            ],
        }
        self.key = KmsKey(self, "Key", description=f"{name}: Session Manager sessions and their logs",
                          enable_key_rotation=True, deletion_window_in_days=7 if sandbox else 30,
                          policy=json.dumps(policy))
        self.alias = KmsAlias(self, "Alias", name=f"alias/{name}-sessions", target_key_id=self.key.key_id)
        self.log_group = CloudwatchLogGroup(self, "LogGroup", name=group, retention_in_days=retention_days,
                                            kms_key_id=self.key.arn)
        content = {
            "schemaVersion": "1.0",
            "description": f"Session Manager preferences, managed by bastionless ({name})",
            "sessionType": "Standard_Stream",
            "inputs": {
                "s3BucketName": "",
                "s3KeyPrefix": "",
                "s3EncryptionEnabled": True,
                "cloudWatchLogGroupName": self.log_group.name,
                "cloudWatchEncryptionEnabled": True,
                "cloudWatchStreamingEnabled": True,
                # Encrypts session data end to end with our key (clients and agents need kms access).
                "kmsKeyId": self.key.arn,
                "runAsEnabled": False,
                "runAsDefaultUser": "",
                "idleSessionTimeout": str(idle_timeout_minutes),
                "maxSessionDuration": str(max_session_minutes),
                "shellProfile": {"windows": "", "linux": ""},
            },
        }
        self.preferences = SsmDocument(self, "Preferences", name=PREFERENCES_DOCUMENT, document_type="Session",
                                       document_format="JSON", content=json.dumps(content, indent=2))
        if adopt_existing:
            self.preferences.import_from(PREFERENCES_DOCUMENT)
