"""The private PostgreSQL database: isolated subnets, reachable from the client security groups only."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.db_instance import DbInstance
from cdktf_cdktf_provider_aws.db_parameter_group import DbParameterGroup, DbParameterGroupParameter
from cdktf_cdktf_provider_aws.db_subnet_group import DbSubnetGroup
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.security_group_rule import SecurityGroupRule
from constructs import Construct

from stacks.network import Network


class Database(Construct):
    """RDS PostgreSQL with an RDS-managed master secret, forced TLS, IAM auth, encrypted gp3 storage."""

    subnet_group: DbSubnetGroup
    security_group: SecurityGroup
    parameter_group: DbParameterGroup
    instance: DbInstance

    def __init__(self, scope: Construct, construct_id: str, *, name: str, network: Network, clients: SecurityGroup,
                 engine_version: str, instance_class: str, allocated_storage_gb: int, db_name: str,
                 username: str, port: int, deletion_protection: bool, backup_retention_days: int,
                 sandbox: bool) -> None:
        super().__init__(scope, construct_id)
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
        self.parameter_group = DbParameterGroup(
            self, "ParameterGroup", name=f"{name}-postgres{major}", family=f"postgres{major}",
            description=f"{name}: TLS required",
            parameter=[DbParameterGroupParameter(name="rds.force_ssl", value="1"),
                       # Session history shows who connected through the relay; the database logs when.
                       DbParameterGroupParameter(name="log_connections", value="1")])
        self.instance = DbInstance(
            self, "Instance",
            identifier=name,
            engine="postgres",
            engine_version=engine_version,
            instance_class=instance_class,
            allocated_storage=allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
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
            enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
            # The sandbox is thrown away daily; everywhere else a delete leaves a final snapshot.
            skip_final_snapshot=sandbox,
            final_snapshot_identifier=None if sandbox else f"{name}-final",
            apply_immediately=sandbox,
            tags={"Name": name},
        )
