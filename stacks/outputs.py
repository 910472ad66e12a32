"""The stack outputs, named exactly as ops.facts.OUTPUT_NAMES (what ops/ and the sandbox read)."""

from __future__ import annotations

from cdktf import TerraformOutput
from constructs import Construct

from ops.facts import OUTPUT_NAMES
from stacks.access import Access
from stacks.database import Database
from stacks.ecs_exec import EcsExec
from stacks.network import Network
from stacks.relay import Relay
from stacks.session_logs import SessionLogs


def add_outputs(scope: Construct, *, network: Network, relay: Relay, database: Database, session_logs: SessionLogs,
                access: Access, ecs: EcsExec | None) -> dict[str, TerraformOutput]:
    values: dict[str, object] = {
        "relay_instance_id": relay.instance.id,
        "relay_security_group_id": relay.security_group.id,
        "db_identifier": database.instance.identifier,
        "db_address": database.instance.address,
        "db_port": database.instance.port,
        "db_name": database.instance.db_name,
        "db_username": database.instance.username,
        "db_secret_arn": database.instance.master_user_secret.get(0).secret_arn,
        "session_log_group": session_logs.log_group.name,
        "session_kms_key_arn": session_logs.key.arn,
        "developer_role_arn": access.role.arn,
        "developer_policy_json": access.policy.policy,
        "ecs_cluster_name": ecs.cluster.name if ecs else "",
        "vpc_id": network.vpc.id,
    }
    assert tuple(values) == OUTPUT_NAMES
    # The output id is the Terraform output name; override_logical_id keeps it free of construct prefixes.
    outputs: dict[str, TerraformOutput] = {}
    for key, value in values.items():
        out = TerraformOutput(scope, key, value=value)
        out.override_logical_id(key)
        outputs[key] = out
    return outputs
