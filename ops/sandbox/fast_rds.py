"""Sandbox only: create the RDS instance through the emulator's API and adopt it into terraform state.

Why: against moto, `aws_db_instance` takes ~80 s to create, none of it work: the provider's waiter
sleeps a fixed minute before its first poll and then wants three "available" answers 10 s apart.
The API call itself returns at once. So, for a sandbox env whose state does not hold the instance yet:

1. `terraform apply -target` the resources the instance refers to (subnet group, security group,
   parameter group, and what they need);
2. `CreateDBInstance` with exactly the arguments the provider would send, taken from the
   synthesized configuration (references resolved from the state) plus the provider's default tags;
3. `terraform import` it; then record in the state the arguments RDS never reports back
   (`apply_immediately`, `manage_master_user_password`, ...) with the configured values, as the
   provider's own create would have, so the plan has nothing to "update" (an update would run the
   same slow waiter);
4. the caller runs the normal full apply, which creates everything else.

The RDS event subscription waits the same way (a fixed 30 s before the provider's first poll,
internal/service/rds/wait.go `waitEventSubscriptionCreated`): once the instance is in the state, each
`aws_db_event_subscription` whose arguments all translate is created through the API and imported too.

The configuration is untouched (no override files, nothing different from prod), and prod never
comes here. Anything this module does not know how to translate makes it step aside: the
ordinary apply then creates the instance, just slower.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from ops import aws
from ops.config import EnvConfig
from ops.console import say
from ops.errors import OpsError
from ops.terraform import Terraform

RESOURCE_TYPE = "aws_db_instance"
# Terraform argument -> CreateDBInstance parameter, for the arguments our Database construct sets.
CREATE_PARAMS = {
    "identifier": "DBInstanceIdentifier",
    "allocated_storage": "AllocatedStorage",
    "auto_minor_version_upgrade": "AutoMinorVersionUpgrade",
    "backup_retention_period": "BackupRetentionPeriod",
    "copy_tags_to_snapshot": "CopyTagsToSnapshot",
    "db_name": "DBName",
    "db_subnet_group_name": "DBSubnetGroupName",
    "deletion_protection": "DeletionProtection",
    "enabled_cloudwatch_logs_exports": "EnableCloudwatchLogsExports",
    "engine": "Engine",
    "engine_version": "EngineVersion",
    "iam_database_authentication_enabled": "EnableIAMDatabaseAuthentication",
    "instance_class": "DBInstanceClass",
    "manage_master_user_password": "ManageMasterUserPassword",
    "parameter_group_name": "DBParameterGroupName",
    "port": "Port",
    "publicly_accessible": "PubliclyAccessible",
    "storage_encrypted": "StorageEncrypted",
    "storage_type": "StorageType",
    "username": "MasterUsername",
    "vpc_security_group_ids": "VpcSecurityGroupIds",
    "kms_key_id": "KmsKeyId",
    "multi_az": "MultiAZ",
    "max_allocated_storage": "MaxAllocatedStorage",
    "backup_window": "PreferredBackupWindow",
    "maintenance_window": "PreferredMaintenanceWindow",
    "ca_cert_identifier": "CACertificateIdentifier",
    "master_user_secret_kms_key_id": "MasterUserSecretKmsKeyId",
    "engine_lifecycle_support": "EngineLifecycleSupport",
}
SUBSCRIPTION_TYPE = "aws_db_event_subscription"
# Terraform argument -> CreateEventSubscription parameter (the import id is the name).
SUBSCRIPTION_PARAMS = {
    "name": "SubscriptionName",
    "sns_topic": "SnsTopicArn",
    "source_type": "SourceType",
    "source_ids": "SourceIds",
    "event_categories": "EventCategories",
    "enabled": "Enabled",
}
# Arguments that exist only in terraform (per-request flags or delete-time settings): RDS does not
# report them, so an import leaves them empty while a create stores the configured value.
CONFIG_ONLY = ("apply_immediately", "manage_master_user_password", "skip_final_snapshot",
               "final_snapshot_identifier", "delete_automated_backups")
_IGNORED = {"//", "tags", "lifecycle", "depends_on", "timeouts", "provider"}
_REF = re.compile(r"^\$\{([a-z][a-z0-9_]*\.[A-Za-z0-9_]+)\.([a-z0-9_]+)\}$")


@dataclass(frozen=True)
class Adoption:
    address: str
    spec: dict[str, Any]
    refs: tuple[str, ...]
    default_tags: dict[str, str]

    @property
    def identifier(self) -> str:
        return str(self.spec["identifier"])


def plan_adoption(config: dict[str, Any], state: dict[str, Any]) -> tuple[Adoption | None, str]:
    """What to adopt, or (None, why not)."""
    instances = (config.get("resource") or {}).get(RESOURCE_TYPE) or {}
    if len(instances) != 1:
        return None, f"{len(instances)} {RESOURCE_TYPE} resources (expected one)"
    name, spec = next(iter(instances.items()))
    address = f"{RESOURCE_TYPE}.{name}"
    if address in _managed(state):
        return None, "already in the state"
    unknown = sorted(set(spec) - set(CREATE_PARAMS) - set(CONFIG_ONLY) - _IGNORED)
    if unknown or "count" in spec or "for_each" in spec:
        return None, f"argument {(unknown or ['count/for_each'])[0]!r} is not translated"
    if not isinstance(spec.get("identifier"), str) or "${" in spec["identifier"]:
        return None, "the identifier is not a literal"
    refs: set[str] = set()
    for key in CREATE_PARAMS:
        for value in _values(spec.get(key)):
            if isinstance(value, str) and "${" in value:
                match = _REF.match(value)
                if match is None:
                    return None, f"{key} = {value!r} is not a plain reference"
                refs.add(match.group(1))
    # Everything that does not need the instance goes in the first, targeted apply, not only what the
    # instance needs: the slow creations elsewhere (KMS key, relay) then overlap with them.
    independent = tuple(sorted(set(_addresses(config)) - _dependents(config, address)))
    refs.update(independent)
    provider = ((config.get("provider") or {}).get("aws") or [{}])[0]
    default_tags = ((provider.get("default_tags") or [{}])[0].get("tags") or {})
    return Adoption(address=address, spec=spec, refs=tuple(sorted(refs)),
                    default_tags={str(k): str(v) for k, v in default_tags.items()}), ""


def _addresses(config: dict[str, Any]) -> list[str]:
    return [f"{rtype}.{name}" for rtype, items in (config.get("resource") or {}).items() for name in items]


def _dependents(config: dict[str, Any], address: str) -> set[str]:
    """`address` and every resource that refers to it, directly or through others (data sources included:
    a role policy refers to the instance through its aws_iam_policy_document)."""
    bodies = {f"{rtype}.{name}": json.dumps(body) for rtype, items in (config.get("resource") or {}).items()
              for name, body in items.items()}
    bodies.update({f"data.{rtype}.{name}": json.dumps(body) for rtype, items in (config.get("data") or {}).items()
                   for name, body in items.items()})
    found = {address}
    grew = True
    while grew:
        grew = False
        for other, body in bodies.items():
            if other not in found and any(re.search(rf"(\$\{{|\"){re.escape(a)}[.\"]", body) for a in found):
                found.add(other)
                grew = True
    return found


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _managed(state: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """The state's managed resources by address: their first instance's attributes (None: no instance)."""
    found: dict[str, dict[str, Any] | None] = {}
    for res in state.get("resources", []):
        if res.get("mode") == "managed":
            instances = res.get("instances") or []
            attrs = (instances[0].get("attributes") or {}) if instances else None
            found[f"{res.get('type')}.{res.get('name')}"] = attrs
    return found


def _attributes(state: dict[str, Any], address: str) -> dict[str, Any]:
    attrs = _managed(state).get(address)
    if attrs is None:
        raise OpsError(f"{address} is not in the terraform state after the targeted apply")
    return attrs


def _tags(default_tags: dict[str, str], spec: dict[str, Any]) -> list[dict[str, str]]:
    """The Tags a create sends: the provider's default tags, then the resource's own."""
    tags = {**default_tags, **{str(k): str(v) for k, v in (spec.get("tags") or {}).items()}}
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _resolve(value: Any, state: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_resolve(v, state) for v in value]
    if isinstance(value, str) and (match := _REF.match(value)):
        return _attributes(state, match.group(1))[match.group(2)]
    return value


def create_params(adoption: Adoption, state: dict[str, Any]) -> dict[str, Any]:
    params = {CREATE_PARAMS[k]: _resolve(v, state) for k, v in adoption.spec.items() if k in CREATE_PARAMS}
    if tags := _tags(adoption.default_tags, adoption.spec):
        params["Tags"] = tags
    return params


def adopt_database(cfg: EnvConfig, tf: Terraform, *, config: dict[str, Any], out: TextIO = sys.stderr) -> bool:
    """Create and import the RDS instance when the state does not hold it. True if it did."""
    if not cfg.sandbox:
        raise ValueError("the RDS shortcut is for sandbox environments only")
    adoption, why = plan_adoption(config, tf.state())
    if adoption is None:
        if why != "already in the state":
            say(out, f"sandbox: creating the RDS instance the slow way ({why})")
        return False
    say(out, f"sandbox: creating {adoption.identifier} and its event subscriptions through the emulator's API and "
              "importing them (the provider's create waiters alone would take ~110 s); first their dependencies:")
    if adoption.refs:
        tf.apply(auto_approve=True, targets=adoption.refs)
    rds = aws.client(cfg, "rds")
    try:
        rds.create_db_instance(**create_params(adoption, tf.state()))
    except rds.exceptions.DBInstanceAlreadyExistsFault:
        pass  # left over from an interrupted run: adopt it as it is
    try:
        tf.import_resource(adoption.address, adoption.identifier)
    except BaseException:
        # Not in the state: remove it, or the ordinary apply would fail on "already exists".
        rds.delete_db_instance(DBInstanceIdentifier=adoption.identifier, SkipFinalSnapshot=True,
                               DeleteAutomatedBackups=True)
        raise
    record_config_only_arguments(tf, adoption)
    for subscription in plan_subscriptions(config, tf.state(), default_tags=adoption.default_tags):
        adopt_subscription(cfg, tf, subscription)
    return True


@dataclass(frozen=True)
class Subscription:
    address: str
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.params["SubscriptionName"])


def plan_subscriptions(config: dict[str, Any], state: dict[str, Any], *,
                       default_tags: dict[str, str]) -> list[Subscription]:
    """The event subscriptions to create through the API: not in the state, every argument translated and
    every reference already in the state. The others are left to the ordinary apply."""
    held = _managed(state)
    found = []
    for name, spec in ((config.get("resource") or {}).get(SUBSCRIPTION_TYPE) or {}).items():
        address = f"{SUBSCRIPTION_TYPE}.{name}"
        if address in held or set(spec) - set(SUBSCRIPTION_PARAMS) - _IGNORED or not isinstance(spec.get("name"), str):
            continue
        try:
            params = {SUBSCRIPTION_PARAMS[k]: _resolve(v, state) for k, v in spec.items() if k in SUBSCRIPTION_PARAMS}
        except (OpsError, KeyError):
            continue  # a reference to something the state does not hold (yet)
        if any("${" in str(v) for v in [*_values(params.get("SourceIds")), params.get("SnsTopicArn")]):
            continue
        # The provider always sends Enabled (its schema default is true); moto's default is false.
        params.setdefault("Enabled", True)
        if tags := _tags(default_tags, spec):
            params["Tags"] = tags
        found.append(Subscription(address=address, params=params))
    return found


def adopt_subscription(cfg: EnvConfig, tf: Terraform, subscription: Subscription) -> None:
    # (Announced with the instance: `sandbox up` keeps to its line budget.)
    rds = aws.client(cfg, "rds")
    try:
        rds.create_event_subscription(**subscription.params)
    except rds.exceptions.SubscriptionAlreadyExistFault:
        pass  # left over from an interrupted run: adopt it as it is
    try:
        tf.import_resource(subscription.address, subscription.name)
    except BaseException:
        rds.delete_event_subscription(SubscriptionName=subscription.name)
        raise


def record_config_only_arguments(tf: Terraform, adoption: Adoption) -> None:
    state = tf.state()
    attrs = _attributes(state, adoption.address)
    changed = False
    for key in CONFIG_ONLY:
        if key in adoption.spec and attrs.get(key) != adoption.spec[key]:
            attrs[key] = adoption.spec[key]
            changed = True
    if changed:
        state["serial"] = int(state.get("serial", 0)) + 1
        tf.push_state(state)


def release_database(cfg: EnvConfig, tf: Terraform, out: TextIO) -> None:
    """Before a confirmed destroy applies: delete the RDS event subscriptions and instances in the state
    through the API, with the arguments the provider's delete would send. Its delete then finds them gone
    and returns at once instead of sleeping through its waiters (30 s for the subscription, a minute for the
    instance, one after the other). The destroy plan, shown and confirmed, is unchanged."""
    if not cfg.sandbox:
        raise ValueError("the RDS shortcut is for sandbox environments only")
    state = tf.state()
    rds = aws.client(cfg, "rds")
    held = [(address.split(".", 1)[0], attrs or {}) for address, attrs in _managed(state).items()]
    for rtype, attrs in held:
        if rtype == SUBSCRIPTION_TYPE and attrs.get("name"):
            with contextlib.suppress(rds.exceptions.SubscriptionNotFoundFault):
                rds.delete_event_subscription(SubscriptionName=attrs["name"])
    for rtype, attrs in held:
        if rtype == RESOURCE_TYPE and attrs.get("identifier"):
            say(out, f"sandbox: deleting {attrs['identifier']} through the emulator's API (the provider's delete "
                     "waiter alone would take ~90 s)")
            params: dict[str, Any] = {
                "DBInstanceIdentifier": attrs["identifier"],
                "SkipFinalSnapshot": bool(attrs.get("skip_final_snapshot")),
                "DeleteAutomatedBackups": attrs.get("delete_automated_backups", True) is not False}
            if not params["SkipFinalSnapshot"] and attrs.get("final_snapshot_identifier"):
                params["FinalDBSnapshotIdentifier"] = attrs["final_snapshot_identifier"]
            with contextlib.suppress(rds.exceptions.DBInstanceNotFoundFault):
                rds.delete_db_instance(**params)

