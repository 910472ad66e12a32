"""Database construct: isolated subnets, SG from the relay only, encrypted private PostgreSQL, managed secret."""

from __future__ import annotations

from typing import Any

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
    resources,
)


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
        assert {"name": "rds.force_ssl", "value": "1"} in pg["parameter"]


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
            assert db["final_snapshot_identifier"] == f"bastionless-{name}-final"
    assert one(synthesized["prod"], "aws_db_instance", "Database/Instance")["deletion_protection"] is True
