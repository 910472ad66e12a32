"""The private PostgreSQL database: isolated subnets, reachable from the client security groups only."""

from __future__ import annotations

import json

from cdktf import Fn, TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.db_instance import DbInstance
from cdktf_cdktf_provider_aws.db_parameter_group import DbParameterGroup, DbParameterGroupParameter
from cdktf_cdktf_provider_aws.db_subnet_group import DbSubnetGroup
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.kms_alias import KmsAlias
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.security_group_rule import SecurityGroupRule
from constructs import Construct

from ops.facts import partition
from stacks.network import Network
from stacks.policy_document import policy_document

# What RDS PostgreSQL exports to CloudWatch Logs; the stack creates these groups first (retention, KMS).
LOG_EXPORTS = ("postgresql", "upgrade")


def rds_log_group_name(identifier: str, export: str) -> str:
    return f"/aws/rds/instance/{identifier}/{export}"


class Database(Construct):
    """RDS PostgreSQL with an RDS-managed master secret, forced TLS, IAM auth, encrypted gp3 storage.

    Storage, the master secret and the exported logs are encrypted with our own KMS key, so a snapshot
    can be shared with another account for a restore (AWS-managed keys cannot be shared).
    """

    key: KmsKey
    alias: KmsAlias
    log_groups: dict[str, CloudwatchLogGroup]
    subnet_group: DbSubnetGroup
    security_group: SecurityGroup
    parameter_group: DbParameterGroup
    instance: DbInstance

    def __init__(self, scope: Construct, construct_id: str, *, name: str, network: Network, clients: SecurityGroup,
                 engine_version: str, instance_class: str, allocated_storage_gb: int, db_name: str,
                 username: str, port: int, deletion_protection: bool, backup_retention_days: int,
                 account_id: str, region: str, max_allocated_storage_gb: int, backup_window: str,
                 maintenance_window: str, multi_az: bool, ca_cert_identifier: str, log_min_duration_ms: int,
                 extended_support: bool, log_retention_days: int, sandbox: bool) -> None:
        super().__init__(scope, construct_id)
        part = partition(region)
        log_arn = f"arn:{part}:logs:{region}:{account_id}:log-group:/aws/rds/instance/{name}/*"
        self.key = KmsKey(
            self, "Key", description=f"{name}: RDS storage, snapshots, master secret and database logs",
            enable_key_rotation=True, deletion_window_in_days=7 if sandbox else 30,
            policy=json.dumps({"Version": "2012-10-17", "Statement": [
                # RDS and Secrets Manager use the key through the caller's IAM permissions and grants.
                {"Sid": "AccountAdministers", "Effect": "Allow",
                 "Principal": {"AWS": f"arn:{part}:iam::{account_id}:root"}, "Action": "kms:*", "Resource": "*"},
                {"Sid": "CloudWatchLogsForThisDatabase", "Effect": "Allow",
                 "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                 "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                            "kms:Describe*"], "Resource": "*",
                 "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": log_arn}}}]}))
        self.alias = KmsAlias(self, "Alias", name=f"alias/{name}-database", target_key_id=self.key.key_id)
        # RDS would create these on first export, without retention or our key; existing first, they are used.
        self.log_groups = {
            export: CloudwatchLogGroup(self, f"{export.capitalize()}LogGroup", name=rds_log_group_name(name, export),
                                       retention_in_days=log_retention_days, kms_key_id=self.key.arn)
            for export in LOG_EXPORTS}
        self.subnet_group = DbSubnetGroup(self, "SubnetGroup", name=name,
                                          subnet_ids=[s.id for s in network.isolated_subnets],
                                          description=f"{name}: isolated subnets (no route out)")
        self.security_group = SecurityGroup(self, "SecurityGroup", name=f"{name}-db", vpc_id=network.vpc.id,
                                            description="PostgreSQL from the relay only",
                                            tags={"Name": f"{name}-db"})
        # Both ends of the one allowed path; separate rules avoid a cycle between the two groups.
        SecurityGroupRule(self, "IngressFromClients", type="ingress", security_group_id=self.security_group.id,
                          protocol="tcp", from_port=port, to_port=port, source_security_group_id=clients.id,
                          description="PostgreSQL from the relay")
        SecurityGroupRule(self, "ClientEgressToDatabase", type="egress", security_group_id=clients.id,
                          protocol="tcp", from_port=port, to_port=port, source_security_group_id=self.security_group.id,
                          description="PostgreSQL to the database")

        major = engine_version.split(".")[0]
        # name_prefix + create-before-destroy: a major upgrade creates the new family's group before the
        # instance moves to it and deletes the old one after (a fixed name would collide or be in use).
        self.parameter_group = DbParameterGroup(
            self, "ParameterGroup", name_prefix=f"{name}-postgres{major}-", family=f"postgres{major}",
            description=f"{name}: TLS required, on-call logging",
            parameter=parameter_group_settings(log_min_duration_ms),
            lifecycle=TerraformResourceLifecycle(create_before_destroy=True))
        self.instance = DbInstance(
            self, "Instance",
            identifier=name,
            engine="postgres",
            engine_version=engine_version,
            instance_class=instance_class,
            allocated_storage=allocated_storage_gb,
            max_allocated_storage=max_allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=self.key.arn,
            master_user_secret_kms_key_id=self.key.arn,
            multi_az=multi_az,
            ca_cert_identifier=ca_cert_identifier,
            backup_window=backup_window,
            maintenance_window=maintenance_window,
            # Automated backups outlive the instance (until their retention ends): a deleted instance
            # can still be restored to a point in time.
            delete_automated_backups=False,
            engine_lifecycle_support=("open-source-rds-extended-support" if extended_support
                                      else "open-source-rds-extended-support-disabled"),
            db_name=db_name,
            username=username,
            # RDS creates and rotates the password in Secrets Manager: none in code, config or state.
            manage_master_user_password=True,
            port=port,
            db_subnet_group_name=self.subnet_group.name,
            vpc_security_group_ids=[self.security_group.id],
            parameter_group_name=self.parameter_group.name,
            publicly_accessible=False,
            iam_database_authentication_enabled=True,
            deletion_protection=deletion_protection,
            backup_retention_period=backup_retention_days,
            copy_tags_to_snapshot=True,
            auto_minor_version_upgrade=True,
            enabled_cloudwatch_logs_exports=list(LOG_EXPORTS),
            # The sandbox is thrown away daily; everywhere else a delete leaves a final snapshot, named
            # with the instance's creation time so that destroying a re-created environment works too.
            skip_final_snapshot=sandbox,
            final_snapshot_identifier=None if sandbox else final_snapshot_name(name),
            apply_immediately=sandbox,
            depends_on=list(self.log_groups.values()),
            tags={"Name": name},
        )
        if not sandbox:
            # timestamp() changes on every plan: keep the name taken at creation.
            self.instance.lifecycle = TerraformResourceLifecycle(ignore_changes=["final_snapshot_identifier"])


    def allow_secret_value(self, construct_id: str, *, role: IamRole) -> IamRolePolicy:
        """Let `role` read the master secret's value (envs that list no people: no per-person identities)."""
        document = policy_document(self, f"{construct_id}Document", {"Version": "2012-10-17", "Statement": [{
            "Sid": "DatabaseSecretOnly", "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            "Resource": self.instance.master_user_secret.get(0).secret_arn}]})
        return IamRolePolicy(self, construct_id, name="database-secret", role=role.id, policy=document.json)

    def allow_secret_reads(self, construct_id: str, *, role: IamRole, region: str) -> IamRolePolicy:
        """Let `role` decrypt the master secret, which our key encrypts: only through Secrets Manager."""
        document = policy_document(self, f"{construct_id}Document", {"Version": "2012-10-17", "Statement": [{
            "Sid": "DecryptTheDatabaseSecretViaSecretsManager", "Effect": "Allow",
            "Action": "kms:Decrypt", "Resource": self.key.arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}}}]})
        return IamRolePolicy(self, construct_id, name="database-secret-key", role=role.id, policy=document.json)


def final_snapshot_name(name: str) -> str:
    """`<stack>-final-YYYYMMDDhhmm`, evaluated by Terraform when the instance is created."""
    return f"{name}-final-" + Fn.formatdate("YYYYMMDDhhmm", Fn.timestamp())


def parameter_group_settings(log_min_duration_ms: int) -> list[DbParameterGroupParameter]:
    """What on-call needs in the logs; never `log_statement = all` (it would log every query's values)."""
    values = [
        ("rds.force_ssl", "1", "immediate"),
        # Session history shows who connected through the relay; the database logs when, and for how long.
        ("log_connections", "1", "immediate"),
        ("log_disconnections", "1", "immediate"),
        ("log_min_duration_statement", str(log_min_duration_ms), "immediate"),
        ("log_lock_waits", "1", "immediate"),
        # DDL includes CREATE/ALTER ROLE ... PASSWORD: set passwords with psql's \password (it sends a hash)
        # or use IAM authentication; the log group is encrypted with our key and expires.
        ("log_statement", "ddl", "immediate"),
        # pgaudit (supported by RDS PostgreSQL) records role and privilege changes; loading it needs a reboot,
        # which the maintenance window's restart or `aws rds reboot-db-instance` gives it.
        ("shared_preload_libraries", "pg_stat_statements,pgaudit", "pending-reboot"),
        ("pgaudit.log", "role", "immediate"),
    ]
    return [DbParameterGroupParameter(name=n, value=v, apply_method=m) for n, v, m in values]
