"""[[targets]]: extra services an env lets developers forward to, each through a document of its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ops.config import load_env
from ops.errors import ConfigError
from ops.targets import Target, parse_targets
from tests.stack_fixtures import one, ref, resources, synth_one
from tests.test_stack_access import document

GOOD = {"name": "cache", "host": "cache.abc123.use1.cache.amazonaws.com", "port": 6379, "cidr": "10.40.20.0/24"}


def test_a_target_parses() -> None:
    assert parse_targets("envs/x.toml", [GOOD]) == (Target(name="cache", host=GOOD["host"], port=6379,
                                                            cidr="10.40.20.0/24"),)


@pytest.mark.parametrize(("change", "field", "fix"), [
    ({"name": "Cache"}, "targets[0].name", "lowercase"),
    ({"name": "database"}, "targets[0].name", "not \"database\""),
    ({"host": "a b"}, "targets[0].host", "host name or address"),
    ({"port": 0}, "targets[0].port", "1 to 65535"),
    ({"port": "6379"}, "targets[0].port", "1 to 65535"),
    ({"cidr": "10.40.20.5/24"}, "targets[0].cidr", "IPv4 network"),  # host bits set
    ({"cidr": "0.0.0.0/0"}, "targets[0].cidr", "/16 or narrower"),
    ({"colour": "red"}, "targets[0].colour", "allowed: cidr, host, name, port"),
])
def test_each_bad_field_is_named_with_its_fix(change: dict[str, Any], field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_targets("envs/x.toml", [{**GOOD, **change}])
    assert str(err.value).startswith("envs/x.toml: ") and field in str(err.value) and fix in str(err.value)


def test_a_name_used_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"targets\[1\].name = 'cache' is used twice"):
        parse_targets("envs/x.toml", [GOOD, {**GOOD, "port": 6380}])


@pytest.mark.usefixtures("cdktf_runtime")
def test_each_target_gets_a_fixed_document_the_developer_may_use_and_relay_egress_to_it(tmp_path: Path) -> None:
    cfg = load_env("prod")
    cfg = dataclasses.replace(cfg, targets=parse_targets("t", [GOOD]))
    doc = synth_one(cfg, tmp_path)
    target_doc = one(doc, "aws_ssm_document", "Access/TargetPortDocumentCache")
    assert target_doc["name"] == "bastionless-prod-target-cache"
    props = json.loads(target_doc["content"])["properties"]
    assert (props["host"], props["portNumber"]) == (GOOD["host"], "6379")
    assert set(json.loads(target_doc["content"])["parameters"]) == {"localPortNumber"}  # nothing else to point
    policy = document(doc, "Access/Policy")
    (start,) = [s for s in policy["Statement"] if s["Sid"] == "StartPortForwardingToTheDatabaseOnly"]
    name_ref = ref(doc, "aws_ssm_document", "Access/TargetPortDocumentCache", "name")
    assert any(r.endswith(f":document/{name_ref}") for r in start["Resource"]), start["Resource"]
    assert not any("AWS-StartPortForwarding" in r for r in start["Resource"])
    rule = resources(doc, "aws_security_group_rule")["Relay/EgressToCache"]
    assert (rule["type"], rule["from_port"], rule["to_port"], rule["cidr_blocks"]) == (
        "egress", 6379, 6379, ["10.40.20.0/24"])
    assert rule["security_group_id"] == ref(doc, "aws_security_group", "Relay/SecurityGroup")
