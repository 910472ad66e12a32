"""One environment's stack. It only wires the constructs together; each lives in its own file."""

from __future__ import annotations

from cdktf import Aspects, TerraformResource, TerraformResourceLifecycle, TerraformStack
from constructs import Construct

from ops.config import EnvConfig
from stacks.access import Access
from stacks.alarms import Alarms, connections_threshold
from stacks.backend import configure_backend, configure_provider
from stacks.database import Database
from stacks.db_identity import BreakGlass, DbConnect
from stacks.ecs_exec import EcsExec
from stacks.flow_logs import FlowLogs
from stacks.guardrails import Guardrails
from stacks.network import Network
from stacks.outputs import add_outputs
from stacks.patching import Patching
from stacks.relay import Relay
from stacks.session_logs import SessionLogs

# Sandbox only: attributes moto 5.2.5 does not store or reports differently, so that a second plan after
# apply shows no changes. Each entry is an emulator gap, never a difference in what the sandbox asks for.
EMULATOR_DRIFT: dict[str, tuple[tuple[str, ...], str]] = {
    "Relay/Instance": (("associate_public_ip_address", "vpc_security_group_ids"),
                       "moto reports an empty ENI association as a public IP and keeps the groups only on the ENI"),
    "Database/ParameterGroup": (("parameter",), "moto does not return user-set parameters"),
    "Database/Instance": (("engine_lifecycle_support", "master_user_secret_kms_key_id"),
                          "moto does not return EngineLifecycleSupport or the master secret's KMS key ARN"),
    "EcsExec/SampleService": (("enable_execute_command", "availability_zone_rebalancing"),
                              "moto does not store enableExecuteCommand or availabilityZoneRebalancing"),
}


class BastionlessStack(TerraformStack):
    """Private RDS reachable only through an SSM relay, with session logging and a developer role."""

    network: Network
    session_logs: SessionLogs
    relay: Relay
    database: Database
    ecs: EcsExec | None
    flow_logs: FlowLogs | None
    access: Access
    db_connect: DbConnect
    break_glass: BreakGlass
    alarms: Alarms
    patching: Patching | None
    guardrails: Guardrails

    def __init__(self, scope: Construct, stack_id: str, *, config: EnvConfig) -> None:
        super().__init__(scope, stack_id)
        cfg = config
        name = cfg.stack_name
        configure_provider(self, cfg=cfg)
        configure_backend(self, cfg=cfg)

        self.network = Network(self, "Network", name=name, region=cfg.region, cidr=cfg.network.vpc_cidr,
                               az_count=cfg.network.az_count, egress=cfg.network.egress,
                               nat_per_az=cfg.network.nat_per_az, account_id=cfg.account_id)
        s = cfg.session
        self.session_logs = SessionLogs(self, "SessionLogs", name=name, env=cfg.name, account_id=cfg.account_id,
                                        region=cfg.region, retention_days=s.log_retention_days,
                                        idle_timeout_minutes=s.idle_timeout_minutes,
                                        max_session_minutes=s.max_session_minutes,
                                        adopt_existing=s.adopt_existing_preferences, sandbox=cfg.sandbox)
        self.relay = Relay(self, "Relay", name=name, env=cfg.name, region=cfg.region, network=self.network,
                           session_key=self.session_logs.key, instance_type=cfg.relay.instance_type,
                           root_volume_gb=cfg.relay.root_volume_gb, patching=cfg.patching.enabled,
                           targets=cfg.targets)
        db = cfg.database
        self.database = Database(self, "Database", name=name, network=self.network,
                                 clients=self.relay.security_group, engine_version=db.engine_version,
                                 instance_class=db.instance_class, allocated_storage_gb=db.allocated_storage_gb,
                                 db_name=db.name, username=db.username, port=db.port,
                                 deletion_protection=db.deletion_protection,
                                 backup_retention_days=db.backup_retention_days, account_id=cfg.account_id,
                                 region=cfg.region, max_allocated_storage_gb=db.max_allocated_storage_gb,
                                 backup_window=db.backup_window, maintenance_window=db.maintenance_window,
                                 multi_az=db.multi_az, ca_cert_identifier=db.ca_cert_identifier,
                                 log_min_duration_ms=db.log_min_duration_ms, extended_support=db.extended_support,
                                 log_retention_days=s.log_retention_days, sandbox=cfg.sandbox)
        self.ecs = None
        if cfg.ecs.enabled:
            self.ecs = EcsExec(self, "EcsExec", name=name, region=cfg.region, network=self.network,
                               session_logs=self.session_logs, sample_service=cfg.ecs.sample_service)
        # Production (the `production` flag, not the name): the network record of what the relay reached.
        self.flow_logs = None
        if cfg.is_prod:
            self.flow_logs = FlowLogs(self, "FlowLogs", name=name, env=cfg.name, region=cfg.region,
                                      account_id=cfg.account_id, network=self.network,
                                      retention_days=s.log_retention_days)
        self.access = Access(self, "Access", name=name, region=cfg.region, account_id=cfg.account_id,
                             principals=cfg.access.developer_principals, require_mfa=cfg.access.require_mfa,
                             relay=self.relay, database=self.database, session_logs=self.session_logs,
                             ecs=self.ecs, targets=cfg.targets)
        self.db_connect = DbConnect(self, "DbConnect", name=name, region=cfg.region, account_id=cfg.account_id,
                                    database=self.database, access=self.access)
        # Unnamed, break-glass falls back to the developers' IAM users (with MFA), never to their federated
        # role: that would make every SSO developer an admin. SSO admins are named in break_glass_principals.
        self.break_glass = BreakGlass(self, "BreakGlass", name=name, region=cfg.region, account_id=cfg.account_id,
                                      principals=(cfg.access.break_glass_principals
                                                  or tuple(p for p in cfg.access.developer_principals
                                                           if ":role/" not in p)), database=self.database,
                                      access=self.access)
        # The master secret is encrypted with the database's own key: the break-glass role fetches it at run
        # time, and developers too only while the env lists no people (no per-person identities yet).
        self.database.allow_secret_reads("BreakGlassSecretKey", role=self.break_glass.role, region=cfg.region)
        if not cfg.people:
            self.database.allow_secret_reads("DeveloperSecretKey", role=self.access.role, region=cfg.region)
            self.database.allow_secret_value("DeveloperSecret", role=self.access.role)
        self.alarms = Alarms(self, "Alarms", name=name, region=cfg.region, account_id=cfg.account_id,
                             relay=self.relay, database=self.database, instance_class=db.instance_class,
                             email=cfg.alarms.email, https_endpoint_parameters=cfg.alarms.https_endpoint_parameters,
                             free_storage_gb=cfg.alarms.free_storage_gb,
                             cpu_credit_balance=cfg.alarms.cpu_credit_balance,
                             connections=cfg.alarms.connections or connections_threshold(db.instance_class))
        p = cfg.patching
        self.patching = Patching(self, "Patching", name=name, env=cfg.name, window_schedule=p.window_schedule,
                                 window_hours=p.window_hours, agent_update_schedule=p.agent_update_schedule,
                                 emulator=cfg.sandbox) if p.enabled else None
        add_outputs(self, network=self.network, relay=self.relay, database=self.database,
                    session_logs=self.session_logs, access=self.access, ecs=self.ecs)

        if cfg.sandbox:
            self._ignore_emulator_drift()

        self.guardrails = Guardrails(sandbox=cfg.sandbox)
        if not db.deletion_protection and not cfg.sandbox and not cfg.is_prod:
            # Only for `production = false`: config validation refuses it for production environments.
            self.guardrails.suppress(
                self.database.instance, "BL-RDS-3",
                reason=f"{cfg.source.name} sets [database] deletion_protection = false for a non-production "
                       f"environment that is rebuilt freely; the final snapshot (BL-RDS-4) still protects its data")
        Aspects.of(self).add(self.guardrails)
        self.node.add_validation(self.guardrails)

    def _ignore_emulator_drift(self) -> None:
        for path, (attributes, _why) in EMULATOR_DRIFT.items():
            node = self.node.try_find_child(path.split("/")[0])
            resource = node.node.try_find_child(path.split("/")[1]) if node is not None else None
            if not isinstance(resource, TerraformResource):
                continue  # e.g. no sample service in this environment
            life = resource.lifecycle
            current = list(life.ignore_changes or []) if life else []
            resource.lifecycle = TerraformResourceLifecycle(
                ignore_changes=[*current, *attributes],
                create_before_destroy=life.create_before_destroy if life else None)
