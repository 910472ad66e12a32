"""The sandbox RDS shortcut's translation from the synthesized configuration (no AWS, no terraform)."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest

from ops.config import load_env
from ops.sandbox import fast_rds
from ops.synth import SYNTH_FILE, synth


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((synth(load_env("sandbox")) / SYNTH_FILE).read_text())
    return data


def _state(**attrs: dict[str, Any]) -> dict[str, Any]:
    return {"resources": [{"mode": "managed", "type": a.split(".")[0], "name": a.split(".")[1],
                           "instances": [{"attributes": v}]} for a, v in attrs.items()]}


def test_the_synthesized_database_is_translated_completely(config: dict[str, Any]) -> None:
    adoption, why = fast_rds.plan_adoption(config, {})
    assert adoption is not None, why
    spec = adoption.spec
    assert adoption.identifier == "bastionless-sandbox"
    # Everything but the instance and what refers to it is applied first, including its own dependencies.
    subnet_group = spec["db_subnet_group_name"].split("${")[1].rsplit(".", 1)[0]
    assert subnet_group in adoption.refs
    assert adoption.address not in adoption.refs
    # Whatever names the instance (its secret, its address) must wait for the instance itself.
    waiting = [r for r in adoption.refs
               if adoption.address in json.dumps(config["resource"][r.split(".")[0]][r.split(".")[1]])]
    assert not waiting, f"{waiting} refer to the database instance: they must wait for it"
    sg = next(r for r in adoption.refs if "Database_SecurityGroup" in r)
    key = spec["kms_key_id"].split("${")[1].rsplit(".", 1)[0]
    assert key in adoption.refs and spec["master_user_secret_kms_key_id"] == spec["kms_key_id"]
    state = _state(**{subnet_group: {"name": "bastionless-sandbox"}, sg: {"id": "sg-123"},
                      spec["parameter_group_name"].split("${")[1].rsplit(".", 1)[0]: {"name": "pg"},
                      key: {"arn": "arn:aws:kms:us-east-1:123456789012:key/k"}})
    params = fast_rds.create_params(adoption, state)
    # The operations settings reach the emulator as the provider would send them.
    assert params["KmsKeyId"] == params["MasterUserSecretKmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/k"
    assert params["CACertificateIdentifier"] == "rds-ca-rsa2048-g1" and params["MaxAllocatedStorage"] == 100
    assert params["PreferredBackupWindow"] == "02:00-03:00"
    assert params["PreferredMaintenanceWindow"] == "sun:04:00-sun:05:00"
    assert params["DBInstanceIdentifier"] == "bastionless-sandbox"
    assert params["VpcSecurityGroupIds"] == ["sg-123"] and params["DBSubnetGroupName"] == "bastionless-sandbox"
    assert params["ManageMasterUserPassword"] is True and "MasterUserPassword" not in params
    assert params["MasterUsername"] == "app_admin" and params["StorageEncrypted"] is True
    tags = {t["Key"]: t["Value"] for t in params["Tags"]}
    assert tags == {"Name": "bastionless-sandbox", "environment": "sandbox", "managed-by": "cdktf",
                    "project": "bastionless"}, "the provider's default tags are part of what it sends"


def test_steps_aside_when_in_state_or_untranslatable(config: dict[str, Any]) -> None:
    adoption, _ = fast_rds.plan_adoption(config, {})
    assert adoption is not None
    name = adoption.address.split(".")[1]
    assert fast_rds.plan_adoption(config, _state(**{adoption.address: {}}))[0] is None
    changed = copy.deepcopy(config)
    changed["resource"]["aws_db_instance"][name]["performance_insights_enabled"] = True
    none, why = fast_rds.plan_adoption(changed, {})
    assert none is None and "performance_insights_enabled" in why
    changed = copy.deepcopy(config)
    changed["resource"]["aws_db_instance"][name]["port"] = "${var.port + 1}"
    assert fast_rds.plan_adoption(changed, {})[0] is None


def test_prod_never_takes_the_shortcut(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sandbox environments only"):
        fast_rds.adopt_database(load_env("prod"), None, config=config)  # type: ignore[arg-type]


def test_the_event_subscription_is_translated_once_its_references_are_in_the_state(config: dict[str, Any]) -> None:
    """internal/service/rds/wait.go (hashicorp/terraform-provider-aws): `waitEventSubscriptionCreated` has
    `Delay: 30 * time.Second`, so the provider's create sleeps 30 s whatever the API answers."""
    (name, spec), = config["resource"][fast_rds.SUBSCRIPTION_TYPE].items()
    topic = spec["sns_topic"][2:-1].rsplit(".", 1)[0]
    db = spec["source_ids"][0][2:-1].rsplit(".", 1)[0]
    assert fast_rds.plan_subscriptions(config, _state(**{topic: {"arn": "arn:aws:sns:us-east-1:1:t"}}),
                                       default_tags={}) == [], "the instance is not in the state yet"
    state = _state(**{topic: {"arn": "arn:aws:sns:us-east-1:1:t"}, db: {"identifier": "bastionless-sandbox"}})
    found = fast_rds.plan_subscriptions(config, state, default_tags={"Project": "bastionless"})
    assert [s.address for s in found] == [f"{fast_rds.SUBSCRIPTION_TYPE}.{name}"]
    params = found[0].params
    assert params["SubscriptionName"] == spec["name"] and params["SnsTopicArn"] == "arn:aws:sns:us-east-1:1:t"
    assert params["SourceIds"] == ["bastionless-sandbox"] and params["SourceType"] == "db-instance"
    assert params["EventCategories"] == spec["event_categories"]
    assert params["Enabled"] is True, "the provider sends its default (true); moto's own default is false"
    assert params["Tags"] == [{"Key": "Project", "Value": "bastionless"}]
    held = _state(**{topic: {"arn": "x"}, db: {"identifier": "y"}, f"{fast_rds.SUBSCRIPTION_TYPE}.{name}": {}})
    assert fast_rds.plan_subscriptions(config, held, default_tags={}) == [], "already in the state"
    changed = copy.deepcopy(config)
    changed["resource"][fast_rds.SUBSCRIPTION_TYPE][name]["name_prefix"] = "x"
    assert fast_rds.plan_subscriptions(changed, state, default_tags={}) == [], "an untranslated argument"


def test_a_confirmed_destroy_deletes_the_database_through_the_api_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """internal/service/rds/instance.go and event_subscription.go: a delete that finds the resource gone returns
    before its waiter (a minute for the instance, 30 s for the subscription), so deleting both through the API
    first, with the arguments the provider's delete would send, leaves the confirmed destroy plan as it was."""
    calls: list[tuple[str, dict[str, Any]]] = []

    class Rds:
        class exceptions:  # botocore's shape
            SubscriptionNotFoundFault = KeyError
            DBInstanceNotFoundFault = LookupError

        def delete_event_subscription(self, **kw: Any) -> None:
            calls.append(("subscription", kw))

        def delete_db_instance(self, **kw: Any) -> None:
            calls.append(("instance", kw))

    class Tf:
        def state(self) -> dict[str, Any]:
            return _state(**{"aws_db_instance.Db": {"identifier": "bastionless-sandbox", "skip_final_snapshot": True,
                                                    "delete_automated_backups": True},
                             "aws_db_event_subscription.Events": {"name": "bastionless-sandbox-database-events"},
                             "aws_sns_topic.Topic": {"arn": "x"}})

    monkeypatch.setattr(fast_rds.aws, "client", lambda cfg, service: Rds())
    out = io.StringIO()
    fast_rds.release_database(load_env("sandbox"), Tf(), out)  # type: ignore[arg-type]
    assert calls == [("subscription", {"SubscriptionName": "bastionless-sandbox-database-events"}),
                     ("instance", {"DBInstanceIdentifier": "bastionless-sandbox", "SkipFinalSnapshot": True,
                                   "DeleteAutomatedBackups": True})], "the subscription first: it names the instance"
    assert "deleting bastionless-sandbox through the emulator's API" in out.getvalue()
    with pytest.raises(ValueError, match="sandbox environments only"):
        fast_rds.release_database(load_env("prod"), Tf(), out)  # type: ignore[arg-type]
