"""Database construct: isolated subnets, SG from the relay only, encrypted private PostgreSQL, managed secret."""

from __future__ import annotations

import json
from typing import Any

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
    resources,
)
from tests.test_stack_access import document


def test_subnet_group_on_isolated_subnets(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        group = one(doc, "aws_db_subnet_group", "Database/SubnetGroup")
        n = load_env(name).network.az_count
        assert group["subnet_ids"] == [ref(doc, "aws_subnet", f"Network/IsolatedSubnet{i + 1}") for i in range(n)]


def test_security_group_ingress_from_relay_only(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        assert one(doc, "aws_security_group", "Database/SecurityGroup")["name"] == f"bastionless-{name}-db"
        sg = ref(doc, "aws_security_group", "Database/SecurityGroup")
        rules = [r for r in resources(doc, "aws_security_group_rule").values() if r["security_group_id"] == sg]
        assert len(rules) == 1
        (rule,) = rules
        assert rule["type"] == "ingress" and rule["from_port"] == rule["to_port"] == 5432
        assert rule["source_security_group_id"] == ref(doc, "aws_security_group", "Relay/SecurityGroup")


def test_parameter_group_forces_ssl(synthesized: dict[str, dict[str, Any]]) -> None:
    for doc in synthesized.values():
        pg = one(doc, "aws_db_parameter_group", "Database/ParameterGroup")
        assert pg["family"] == "postgres16"
        assert {"name": "rds.force_ssl", "value": "1", "apply_method": "immediate"} in pg["parameter"]


def test_instance_properties(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        db = one(doc, "aws_db_instance", "Database/Instance")
        assert db["identifier"] == f"bastionless-{name}"
        assert db["engine"] == "postgres" and db["engine_version"] == "16"
        assert db["instance_class"] == "db.t4g.small" and db["storage_type"] == "gp3"
        assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
        assert db["manage_master_user_password"] is True
        assert "password" not in db
        assert db["db_name"] == cfg.database.name and db["username"] == cfg.database.username
        assert db["deletion_protection"] is cfg.database.deletion_protection
        assert db["backup_retention_period"] == cfg.database.backup_retention_days
        assert db["copy_tags_to_snapshot"] is True
        assert db["iam_database_authentication_enabled"] is True
        assert db["parameter_group_name"] == ref(doc, "aws_db_parameter_group", "Database/ParameterGroup", "name")
        assert db["db_subnet_group_name"] == ref(doc, "aws_db_subnet_group", "Database/SubnetGroup", "name")
        assert db["vpc_security_group_ids"] == [ref(doc, "aws_security_group", "Database/SecurityGroup")]


def test_final_snapshot_skipped_only_in_the_sandbox(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        db = one(doc, "aws_db_instance", "Database/Instance")
        if load_env(name).sandbox:
            assert db["skip_final_snapshot"] is True
        else:
            assert db["skip_final_snapshot"] is False
            # Unique per instance: the creation time, kept afterwards (a second destroy would collide otherwise).
            assert db["final_snapshot_identifier"] == (f"bastionless-{name}-final-"
                                                       '${formatdate("YYYYMMDDhhmm", timestamp())}')
            assert db["lifecycle"]["ignore_changes"] == ["final_snapshot_identifier"]
    assert one(synthesized["prod"], "aws_db_instance", "Database/Instance")["deletion_protection"] is True


def test_operations_settings(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name).database
        db = one(doc, "aws_db_instance", "Database/Instance")
        assert db["max_allocated_storage"] == cfg.max_allocated_storage_gb > db["allocated_storage"]
        assert db["backup_window"] == "02:00-03:00" and db["maintenance_window"] == "sun:04:00-sun:05:00"
        assert db["delete_automated_backups"] is False
        assert db["ca_cert_identifier"] == "rds-ca-rsa2048-g1"
        assert db["multi_az"] is (name == "prod")
        assert db["engine_lifecycle_support"] == "open-source-rds-extended-support-disabled"


def test_customer_managed_key_for_storage_secret_and_logs(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        key = ref(doc, "aws_kms_key", "Database/Key", "arn")
        db = one(doc, "aws_db_instance", "Database/Instance")
        assert db["kms_key_id"] == key and db["master_user_secret_kms_key_id"] == key
        assert one(doc, "aws_kms_key", "Database/Key")["enable_key_rotation"] is True
        policy = json.loads(one(doc, "aws_kms_key", "Database/Key")["policy"])
        logs = [s for s in policy["Statement"] if s["Principal"].get("Service", "").startswith("logs.")]
        assert logs and logs[0]["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"].endswith(
            f":log-group:/aws/rds/instance/bastionless-{name}/*")


def test_log_groups_exist_before_the_instance_with_retention_and_key(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        db = one(doc, "aws_db_instance", "Database/Instance")
        groups = {g["name"]: g for g in resources(doc, "aws_cloudwatch_log_group").values()}
        for export in db["enabled_cloudwatch_logs_exports"]:
            group = groups[f"/aws/rds/instance/bastionless-{name}/{export}"]
            assert group["kms_key_id"] == ref(doc, "aws_kms_key", "Database/Key", "arn")
            assert group["retention_in_days"] == load_env(name).session.log_retention_days
            address = ref(doc, "aws_cloudwatch_log_group", f"Database/{export.capitalize()}LogGroup")
            assert address.removeprefix("${").removesuffix(".id}") in db["depends_on"]


def test_parameter_group_logging_and_upgrades(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        pg = one(doc, "aws_db_parameter_group", "Database/ParameterGroup")
        # A major upgrade creates the next family's group first; a fixed name would collide.
        assert "name" not in pg and pg["name_prefix"] == f"bastionless-{name}-postgres16-"
        assert pg["lifecycle"]["create_before_destroy"] is True
        params = {p["name"]: p["value"] for p in pg["parameter"]}
        assert params["log_disconnections"] == "1" and params["log_lock_waits"] == "1"
        assert params["log_min_duration_statement"] == "1000"
        assert params["log_statement"] == "ddl", "DDL, never all (values of every query would be logged)"
        assert "pgaudit" in params["shared_preload_libraries"] and params["pgaudit.log"] == "role"


def test_developers_may_decrypt_the_secret_only_through_secrets_manager(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        if load_env(name).people:  # people have DB identities of their own: no developer reads the secret
            assert "Database/DeveloperSecretKey" not in resources(doc, "aws_iam_role_policy")
            continue
        policy = one(doc, "aws_iam_role_policy", "Database/DeveloperSecretKey")
        assert policy["role"] == ref(doc, "aws_iam_role", "Access/Role")
        (statement,) = document(doc, "Database/DeveloperSecretKey")["Statement"]
        assert statement["Action"] == "kms:Decrypt"
        assert statement["Resource"] == ref(doc, "aws_kms_key", "Database/Key", "arn")
        region = load_env(name).region
        via = f"secretsmanager.{region}.amazonaws.com"
        assert statement["Condition"] == {"StringEquals": {"kms:ViaService": [via]}}
