"""The sandbox apply creates the alarms, their topic and the patching window; an alarm driven into ALARM
names a runbook that exists (what the page tells on-call to read)."""

from __future__ import annotations

import re
from typing import Any

import boto3
import pytest

from ops import runbooks
from tests.sandbox_fixtures import Sandbox

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow

RUNBOOK_RE = re.compile(r"Runbook: invoke runbook ([a-z0-9-]+)$")


def _client(box: Sandbox, service: str) -> Any:
    return boto3.client(service, endpoint_url=box.moto_url, region_name=box.cfg.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_the_apply_creates_topic_alarms_and_rds_events(sandbox: Sandbox) -> None:
    prefix = f"{sandbox.cfg.stack_name}-"
    sns = _client(sandbox, "sns")
    topic = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}alarms"))
    subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("email", "oncall@example.com")]
    alarms = _client(sandbox, "cloudwatch").describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
    assert {a["AlarmName"].removeprefix(prefix) for a in alarms} == {
        "RelayStatusCheckFailed", "DatabaseFreeStorageLow", "DatabaseCpuCreditsLow", "DatabaseConnectionsHigh",
        "DatabaseNotReporting"}
    for alarm in alarms:
        assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    subscription = _client(sandbox, "rds").describe_event_subscriptions(
        SubscriptionName=f"{prefix}database-events")["EventSubscriptionsList"][0]
    assert subscription["SnsTopicArn"] == topic


def test_an_alarm_in_alarm_names_a_runbook_that_exists(sandbox: Sandbox) -> None:
    cw = _client(sandbox, "cloudwatch")
    name = f"{sandbox.cfg.stack_name}-DatabaseFreeStorageLow"
    cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test: free storage below threshold")
    try:
        firing = cw.describe_alarms(AlarmNames=[name])["MetricAlarms"]
    finally:
        cw.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test done")
    assert [(a["AlarmName"], a["StateValue"]) for a in firing] == [(name, "ALARM")]
    match = RUNBOOK_RE.search(firing[0]["AlarmDescription"])
    assert match, firing[0]["AlarmDescription"]
    book = runbooks.find(match.group(1))
    assert book.name == "database-unhealthy" and "Storage full" in book.text


def test_the_apply_creates_the_patching_window_and_the_rds_settings(sandbox: Sandbox) -> None:
    stack = sandbox.cfg.stack_name
    windows = _client(sandbox, "ssm").describe_maintenance_windows(
        Filters=[{"Key": "Name", "Values": [f"{stack}-relay-patching"]}])["WindowIdentities"]
    assert len(windows) == 1 and windows[0]["Schedule"] == sandbox.cfg.patching.window_schedule
    db = _client(sandbox, "rds").describe_db_instances(DBInstanceIdentifier=stack)["DBInstances"][0]
    assert db["CACertificateIdentifier"] == "rds-ca-rsa2048-g1"
    assert db["PreferredBackupWindow"] == "02:00-03:00"
    assert db["PreferredMaintenanceWindow"] == "sun:04:00-sun:05:00"
    assert db["MaxAllocatedStorage"] == 100
    assert db["KmsKeyId"].endswith(_client(sandbox, "kms").describe_key(KeyId=f"alias/{stack}-database")
                                   ["KeyMetadata"]["KeyId"])
    groups = _client(sandbox, "logs").describe_log_groups(logGroupNamePrefix=f"/aws/rds/instance/{stack}/")
    assert {g["logGroupName"].rsplit("/", 1)[1]: g.get("retentionInDays") for g in groups["logGroups"]} == {
        "postgresql": 7, "upgrade": 7}
    assert all(g.get("kmsKeyId") for g in groups["logGroups"])
