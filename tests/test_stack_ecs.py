"""ECS Exec construct: logged, KMS-encrypted exec on the cluster; task role; optional sample service."""

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


def test_cluster_exec_logging_to_the_session_log_group(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        if not load_env(name).ecs.enabled:
            assert not resources(doc, "aws_ecs_cluster")
            continue
        cluster = one(doc, "aws_ecs_cluster", "EcsExec/Cluster")
        assert cluster["name"] == f"bastionless-{name}"
        exec_cfg = cluster["configuration"]["execute_command_configuration"]
        assert exec_cfg["kms_key_id"] == ref(doc, "aws_kms_key", "SessionLogs/Key", "arn")
        assert exec_cfg["logging"] == "OVERRIDE"
        assert exec_cfg["log_configuration"] == {
            "cloud_watch_encryption_enabled": True,
            "cloud_watch_log_group_name": ref(doc, "aws_cloudwatch_log_group", "SessionLogs/LogGroup", "name")}


def test_task_role_has_the_ssmmessages_channels(synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["prod"]
    assert one(doc, "aws_iam_role", "EcsExec/TaskRole")["name"] == "bastionless-prod-ecs-task"
    policy = document(doc, "EcsExec/TaskExecPolicy")  # a parsed policy document (stacks/policy_document.py)
    actions: set[str] = set()
    for st in policy["Statement"]:
        actions.update([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    assert {"ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel"} <= actions


def test_sample_service_only_when_configured(synthesized: dict[str, dict[str, Any]]) -> None:
    assert not load_env("prod").ecs.sample_service
    assert not resources(synthesized["prod"], "aws_ecs_service")
    doc = synthesized["sandbox"]
    svc = one(doc, "aws_ecs_service", "EcsExec/SampleService")
    assert svc["name"] == "bastionless-sandbox-sample" and svc["enable_execute_command"] is True
    assert svc["launch_type"] == "FARGATE"
    assert svc["network_configuration"]["assign_public_ip"] is False
    task = one(doc, "aws_ecs_task_definition", "EcsExec/SampleTask")
    assert task["task_role_arn"] == ref(doc, "aws_iam_role", "EcsExec/TaskRole", "arn")
    (container,) = json.loads(task["container_definitions"])
    assert container["name"] == "app"
    assert container["linuxParameters"]["initProcessEnabled"] is True
