"""Patching construct: Patch Manager in a maintenance window, a daily scan, and the SSM agent kept current."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
    resources,
    synth_dirs_fixture,  # noqa: F401
    synth_one,
    synthesized_fixture,  # noqa: F401
)
from tests.test_stack_access import document

RELAY_TARGETS = [{"key": "tag:bastionless:role", "values": ["relay"]}]


def _targets(env: str) -> list[dict[str, Any]]:
    return [*RELAY_TARGETS, {"key": "tag:bastionless:env", "values": [env]}]


def test_window_targets_the_relay_by_its_tags(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        window = one(doc, "aws_ssm_maintenance_window", "Patching/Window")
        assert window["schedule"] == cfg.patching.window_schedule and window["schedule_timezone"] == "Etc/UTC"
        assert window["duration"] == cfg.patching.window_hours and window["cutoff"] == 1
        if cfg.sandbox:
            continue
        target = one(doc, "aws_ssm_maintenance_window_target", "Patching/WindowTarget")
        assert target["window_id"] == ref(doc, "aws_ssm_maintenance_window", "Patching/Window")
        assert target["resource_type"] == "INSTANCE" and target["targets"] == _targets(name)
        # The same tags are on the relay: a replaced relay is patched without a change here.
        tags = one(doc, "aws_instance", "Relay/Instance")["tags"]
        assert all(tags[t["key"].removeprefix("tag:")] == t["values"][0] for t in _targets(name))


def test_install_task_and_associations_outside_the_emulator(synthesized: dict[str, dict[str, Any]]) -> None:
    for name in ("prod", "staging"):
        doc = synthesized[name]
        task = one(doc, "aws_ssm_maintenance_window_task", "Patching/InstallTask")
        assert task["task_type"] == "RUN_COMMAND" and task["task_arn"] == "AWS-RunPatchBaseline"
        assert task["targets"] == [{"key": "WindowTargetIds", "values": [
            ref(doc, "aws_ssm_maintenance_window_target", "Patching/WindowTarget")]}]
        run_command = task["task_invocation_parameters"]["run_command_parameters"]
        params = {p["name"]: p["values"] for p in run_command["parameter"]}
        assert params == {"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"]}
        assert task["max_concurrency"] == "1" and task["max_errors"] == "0"
        assocs = resources(doc, "aws_ssm_association")
        scan, agent = assocs["Patching/PatchScan"], assocs["Patching/AgentUpdate"]
        assert scan["name"] == "AWS-RunPatchBaseline" and scan["parameters"] == {"Operation": "Scan"}
        assert scan["schedule_expression"] == "rate(1 day)" and scan["targets"] == _targets(name)
        assert agent["name"] == "AWS-UpdateSSMAgent" and agent["targets"] == _targets(name)
        assert agent["schedule_expression"] == load_env(name).patching.agent_update_schedule


def test_sandbox_leaves_out_only_what_moto_cannot_read_back(synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["sandbox"]
    assert resources(doc, "aws_ssm_maintenance_window")
    assert not resources(doc, "aws_ssm_maintenance_window_target")
    assert not resources(doc, "aws_ssm_maintenance_window_task")
    assert not resources(doc, "aws_ssm_association")
    assert "aws_ssm_maintenance_window_task" not in json.dumps(doc)


@pytest.mark.usefixtures("cdktf_runtime")
def test_patching_off_leaves_a_session_manager_only_relay(tmp_path: Path) -> None:
    """`[patching] enabled = false`: no window, scan or agent association, and the relay's role has nothing
    for Run Command (issue: "nothing for Run Command, Parameter Store or patching unless an env turns it on")."""
    cfg = load_env("prod")
    doc = synth_one(dataclasses.replace(cfg, patching=dataclasses.replace(cfg.patching, enabled=False)), tmp_path)
    assert not [t for t in doc["resource"] if t.startswith(("aws_ssm_maintenance_window", "aws_ssm_association"))]
    policy = document(doc, "Relay/SessionManagerPolicy")
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {"kms:Decrypt", "ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                       "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                       "ssmmessages:OpenDataChannel"}
