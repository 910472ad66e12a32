"""Alarms construct: an SNS topic per env with the env file's subscribers; alarms that name their runbook."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ops import runbooks
from ops.config import estimated_max_connections, load_env
from tests.stack_fixtures import (
    one,
    ref,
    resources,
    synth_dirs_fixture,  # noqa: F401
    synthesized_fixture,  # noqa: F401
)

RUNBOOK_RE = re.compile(r"Runbook: invoke runbook ([a-z0-9-]+)$")


def _alarms(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path.split("/", 1)[1]: cfg for path, cfg in resources(doc, "aws_cloudwatch_metric_alarm").items()}


def test_topic_and_subscriptions_come_from_the_env_file(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        topic = one(doc, "aws_sns_topic", "Alarms/Topic")
        assert topic["name"] == f"bastionless-{name}-alarms"
        topic_arn = ref(doc, "aws_sns_topic", "Alarms/Topic", "arn")
        subs = list(resources(doc, "aws_sns_topic_subscription").values())
        assert all(s["topic_arn"] == topic_arn for s in subs)
        assert sorted(s["endpoint"] for s in subs if s["protocol"] == "email") == sorted(cfg.alarms.email)
        https = [s for s in subs if s["protocol"] == "https"]
        assert len(https) == len(cfg.alarms.https_endpoint_parameters)
        params = doc.get("data", {}).get("aws_ssm_parameter", {})
        for sub in https:
            # The paging URL is read from SSM at apply time: the synthesized JSON holds a reference only.
            assert sub["endpoint"].startswith("${data.aws_ssm_parameter.") and "https://" not in json.dumps(doc)
        assert {p["name"] for p in params.values() if p.get("with_decryption")} == set(
            cfg.alarms.https_endpoint_parameters)
    assert load_env("prod").alarms.https_endpoint_parameters, "prod pages someone"


def test_topic_policy_lets_cloudwatch_and_rds_publish_only_from_this_account(
        synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["prod"]
    policy = json.loads(one(doc, "aws_sns_topic_policy", "Alarms/TopicPolicy")["policy"])
    services = {s["Principal"].get("Service"): s for s in policy["Statement"] if "Service" in s["Principal"]}
    assert set(services) == {"cloudwatch.amazonaws.com", "events.rds.amazonaws.com"}
    for statement in services.values():
        assert statement["Action"] == "sns:Publish"
        assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": "222222222222"}}


def test_the_alarms_on_call_needs(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        alarms = _alarms(doc)
        expected = {"RelayStatusCheckFailed", "DatabaseFreeStorageLow", "DatabaseConnectionsHigh",
                    "DatabaseNotReporting", "DatabaseCpuCreditsLow"}
        assert set(alarms) == expected, name
        topic_arn = ref(doc, "aws_sns_topic", "Alarms/Topic", "arn")
        db_id = ref(doc, "aws_db_instance", "Database/Instance", "identifier")
        for alarm in alarms.values():
            assert alarm["alarm_actions"] == [topic_arn] and alarm["ok_actions"] == [topic_arn]
        relay = alarms["RelayStatusCheckFailed"]
        assert relay["namespace"] == "AWS/EC2" and relay["metric_name"] == "StatusCheckFailed"
        assert relay["dimensions"] == {"InstanceId": ref(doc, "aws_instance", "Relay/Instance")}
        # A stopped or terminated relay reports nothing: missing data pages too.
        assert relay["treat_missing_data"] == "breaching"
        storage = alarms["DatabaseFreeStorageLow"]
        assert storage["metric_name"] == "FreeStorageSpace" and storage["dimensions"] == {"DBInstanceIdentifier": db_id}
        assert storage["comparison_operator"] == "LessThanThreshold"
        assert storage["threshold"] == cfg.alarms.free_storage_gb * 1024**3
        credits = alarms["DatabaseCpuCreditsLow"]
        assert credits["metric_name"] == "CPUCreditBalance" and credits["threshold"] == cfg.alarms.cpu_credit_balance
        conns = alarms["DatabaseConnectionsHigh"]
        limit = estimated_max_connections(cfg.database.instance_class)
        assert limit == 225, "db.t4g.small: 2 GiB / 9531392"
        assert conns["metric_name"] == "DatabaseConnections" and conns["threshold"] == 180
        missing = alarms["DatabaseNotReporting"]
        assert missing["metric_name"] == "CPUUtilization" and missing["treat_missing_data"] == "breaching"


def test_every_alarm_names_a_runbook_that_exists(synthesized: dict[str, dict[str, Any]]) -> None:
    known = {book.name for book in runbooks.load_all()}
    for doc in synthesized.values():
        for path, alarm in _alarms(doc).items():
            match = RUNBOOK_RE.search(alarm["alarm_description"])
            assert match, f"{path}: the description must end with 'Runbook: invoke runbook NAME'"
            assert match.group(1) in known, f"{path} names runbook {match.group(1)!r}, which does not exist"


def test_rds_events_go_to_the_topic(synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["prod"]
    sub = one(doc, "aws_db_event_subscription", "Alarms/DatabaseEvents")
    assert sub["sns_topic"] == ref(doc, "aws_sns_topic", "Alarms/Topic", "arn")
    assert sub["source_type"] == "db-instance"
    assert sub["source_ids"] == [ref(doc, "aws_db_instance", "Database/Instance", "identifier")]
    assert {"availability", "failure", "low storage"} <= set(sub["event_categories"])


@pytest.mark.usefixtures("cdktf_runtime")  # stacks.alarms imports cdktf, whose jsii runtime is a node child
def test_connections_threshold_follows_the_class_or_must_be_given() -> None:
    from ops.config import ENVS_DIR, parse_env
    from ops.errors import ConfigError
    from stacks.alarms import connections_threshold

    assert connections_threshold("db.t4g.medium") == 450 * 8 // 10
    text = (ENVS_DIR / "prod.toml").read_text().replace('instance_class = "db.t4g.small"',
                                                         'instance_class = "db.r7g.large"')
    with pytest.raises(ConfigError, match=r"alarms.connections is 0 but the max_connections of db.r7g.large"):
        parse_env("prod", text.encode(), ENVS_DIR / "prod.toml")
    fixed = text.replace("[alarms]\n", "[alarms]\nconnections = 1200\n")
    assert parse_env("prod", fixed.encode(), ENVS_DIR / "prod.toml").alarms.connections == 1200
