"""Session logs construct: rotated KMS key usable by CloudWatch Logs, encrypted log group, preferences document."""

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
    synth_one,
)
from tests.tiers import require_tool


def test_key_rotation_alias_and_logs_policy(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        key = one(doc, "aws_kms_key", "SessionLogs/Key")
        assert key["enable_key_rotation"] is True
        policy = json.loads(key["policy"])
        logs = [s for s in policy["Statement"] if s.get("Principal", {}).get("Service")]
        assert len(logs) == 1
        assert logs[0]["Principal"]["Service"] == f"logs.{cfg.region}.amazonaws.com"
        assert "kms:GenerateDataKey*" in logs[0]["Action"] and "kms:Decrypt*" in logs[0]["Action"]
        assert logs[0]["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"] == (
            f"arn:aws:logs:{cfg.region}:{cfg.account_id}:log-group:/bastionless/{name}/sessions")
        alias = one(doc, "aws_kms_alias", "SessionLogs/Alias")
        assert alias["name"] == f"alias/bastionless-{name}-sessions"


def test_log_group_encrypted_with_retention(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        group = one(doc, "aws_cloudwatch_log_group", "SessionLogs/LogGroup")
        assert group["name"] == f"/bastionless/{name}/sessions"
        assert group["retention_in_days"] == load_env(name).session.log_retention_days
        assert group["kms_key_id"] == ref(doc, "aws_kms_key", "SessionLogs/Key", "arn")
    assert one(synthesized["staging"], "aws_cloudwatch_log_group", "SessionLogs/LogGroup")["retention_in_days"] == 30


def test_preferences_document(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        d = one(doc, "aws_ssm_document", "SessionLogs/Preferences")
        assert d["name"] == "SSM-SessionManagerRunShell"
        assert d["document_type"] == "Session" and d["document_format"] == "JSON"
        content = json.loads(d["content"])
        assert content["sessionType"] == "Standard_Stream"
        inputs = content["inputs"]
        assert inputs["cloudWatchLogGroupName"] == ref(doc, "aws_cloudwatch_log_group", "SessionLogs/LogGroup", "name")
        assert inputs["cloudWatchEncryptionEnabled"] is True and inputs["cloudWatchStreamingEnabled"] is True
        assert inputs["kmsKeyId"] == ref(doc, "aws_kms_key", "SessionLogs/Key", "arn")
        assert inputs["idleSessionTimeout"] == str(cfg.session.idle_timeout_minutes)
        assert inputs["maxSessionDuration"] == str(cfg.session.max_session_minutes)
        assert "import" not in doc, "no adoption unless asked for"


@pytest.mark.usefixtures("cdktf_runtime")
def test_adopt_existing_generates_an_import_block(tmp_path: Path) -> None:
    cfg = load_env("sandbox")
    doc = synth_one(dataclasses.replace(cfg, session=dataclasses.replace(cfg.session, adopt_existing_preferences=True)),
                    tmp_path)
    target = ref(doc, "aws_ssm_document", "SessionLogs/Preferences").removeprefix("${").removesuffix(".id}")
    assert doc["import"] == [{"id": "SSM-SessionManagerRunShell", "to": target}]


@pytest.mark.slow
def test_adopted_document_validates_with_terraform(tmp_path: Path, terraform_bin: str) -> None:
    from cdktf import App

    from ops.terraform import Terraform, provider_mirror
    from stacks.stack import BastionlessStack

    cfg = load_env("sandbox")
    require_tool(provider_mirror(cfg), "no provider mirror (set BASTIONLESS_PROVIDER_MIRROR)")
    cfg = dataclasses.replace(cfg, session=dataclasses.replace(cfg.session, adopt_existing_preferences=True))
    app = App(outdir=str(tmp_path))
    BastionlessStack(app, cfg.stack_name, config=cfg)
    app.synth()
    Terraform(cfg, tmp_path / "stacks" / cfg.stack_name).validate()


def test_doctor_expects_what_the_stack_deploys(synthesized: dict[str, dict[str, Any]]) -> None:
    from ops.doctor import expected_preferences

    for name, doc in synthesized.items():
        inputs = json.loads(one(doc, "aws_ssm_document", "SessionLogs/Preferences")["content"])["inputs"]
        wanted = expected_preferences(load_env(name), ref(doc, "aws_kms_key", "SessionLogs/Key", "arn"))
        # Doctor compares the live document with these values: they must be the stack's own.
        group = wanted.pop("cloudWatchLogGroupName")
        assert {k: inputs[k] for k in wanted} == wanted
        assert inputs["cloudWatchLogGroupName"] == ref(doc, "aws_cloudwatch_log_group", "SessionLogs/LogGroup", "name")
        assert one(doc, "aws_cloudwatch_log_group", "SessionLogs/LogGroup")["name"] == group
