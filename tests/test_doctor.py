"""doctor's pure rules (security groups, policy reading, principals, versions) and its output formats."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from ops.config import load_env
from ops.doctor import (
    CheckResult,
    _Doctor,
    format_json,
    format_table,
    principal_for_simulation,
    run_checks,
    sg_allows,
    simulation_decisions,
    statements_allow,
    version_at_least,
)

RELAY_SG = "sg-relay"


def group(*perms: dict[str, object]) -> dict[str, object]:
    return {"GroupId": "sg-db", "IpPermissions": list(perms)}


def test_sg_allows_the_port_from_the_relay_group_only() -> None:
    rule = {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": RELAY_SG}]}
    assert sg_allows([group(rule)], port=5432, source_groups=[RELAY_SG])
    assert not sg_allows([group(rule)], port=443, source_groups=[RELAY_SG])
    assert not sg_allows([group(rule)], port=5432, source_groups=["sg-other"])
    assert sg_allows([group({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": RELAY_SG}]})], port=443,
                     source_groups=[RELAY_SG])
    assert not sg_allows([group({"IpProtocol": "udp", "FromPort": 0, "ToPort": 65535,
                                 "UserIdGroupPairs": [{"GroupId": RELAY_SG}]})], port=443, source_groups=[RELAY_SG])
    cidr = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.40.4.0/24"}]}
    assert sg_allows([group(cidr)], port=443, source_groups=[], source_ips=["10.40.4.17"])
    assert not sg_allows([group(cidr)], port=443, source_groups=[], source_ips=["10.40.5.17"])
    assert not sg_allows([], port=443, source_groups=[RELAY_SG])


def test_statements_allow_wildcards_and_deny_wins() -> None:
    allow = {"Statement": [{"Effect": "Allow", "Action": "ssmmessages:*", "Resource": "*"}]}
    deny = {"Statement": {"Effect": "Deny", "Action": ["ssmmessages:OpenDataChannel"], "Resource": "*"}}
    assert statements_allow([allow], "ssmmessages:CreateDataChannel")
    assert not statements_allow([allow, deny], "ssmmessages:OpenDataChannel")
    assert not statements_allow([allow], "kms:Decrypt")


@pytest.mark.parametrize(("arn", "expected"), [
    ("arn:aws:sts::111122223333:assumed-role/bastionless-prod-developer/alice",
     "arn:aws:iam::111122223333:role/bastionless-prod-developer"),
    ("arn:aws:iam::111122223333:user/bob", "arn:aws:iam::111122223333:user/bob"),
    ("arn:aws:iam::111122223333:root", None),
    ("arn:aws:sts::123456789012:user/moto", "arn:aws:iam::123456789012:user/moto"),
])
def test_principal_for_simulation(arn: str, expected: str | None) -> None:
    assert principal_for_simulation(arn) == expected


def test_versions() -> None:
    assert version_at_least("3.1.1374.0", (3, 1, 1374, 0))
    assert version_at_least("3.3.1142.0", (3, 1, 1374, 0))
    assert not version_at_least("3.0.1390.0", (3, 1, 1374, 0))
    assert not version_at_least("1.2.707.0", (1, 2, 764, 0))
    assert not version_at_least("garbage", (1,))


def test_table_shows_fix_for_warn_and_fail_and_json_has_ok() -> None:
    results = [CheckResult("relay", "relay running", "fail", "i-1 is stopped", "aws ec2 start-instances ..."),
               CheckResult("local", "node", "pass", "v20", "unused fix")]
    table = format_table(results)
    assert "FAIL" in table and "fix: aws ec2 start-instances ..." in table
    assert "unused fix" not in table
    assert table.splitlines()[-1] == "1 pass, 0 warn, 1 fail"
    payload = json.loads(format_json(results))
    assert payload["ok"] is False
    assert payload["checks"][0] == {"section": "relay", "name": "relay running", "status": "fail",
                                    "detail": "i-1 is stopped", "fix": "aws ec2 start-instances ..."}


@pytest.mark.usefixtures("real_io")
def test_sandbox_not_running_is_one_fail_with_the_next_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path))
    results = run_checks(load_env("sandbox"))
    failed = [r for r in results if r.status == "fail"]
    assert [(r.name, r.fix) for r in failed] == [("credentials", "invoke sandbox up")]
    assert {r.section for r in results if r.detail.startswith("not checked")} == {
        "relay", "network", "database", "iam", "kms", "ecs"}


def test_simulation_needs_every_resource_allowed() -> None:
    response = {"EvaluationResults": [
        {"EvalActionName": "ssm:StartSession", "EvalDecision": "allowed", "ResourceSpecificResults": [
            {"EvalResourceName": "arn:aws:ec2:eu-west-1:111122223333:instance/i-1", "EvalResourceDecision": "allowed"},
            {"EvalResourceName": "arn:aws:ssm:eu-west-1::document/AWS-StartPortForwardingSessionToRemoteHost",
             "EvalResourceDecision": "implicitDeny"}]},
        {"EvalActionName": "ecs:ExecuteCommand", "EvalDecision": "allowed"},
    ]}
    assert simulation_decisions(response) == {"ssm:StartSession": "implicitDeny", "ecs:ExecuteCommand": "allowed"}


class IamSimulatorDouble(http.server.BaseHTTPRequestHandler):
    """Test double for IAM's policy simulator (AWS itself; moto lacks it), speaking its query/XML protocol.

    `allowed` maps principal ARN -> actions allowed on every resource; `requests` records what was asked.
    """

    allowed: ClassVar[dict[str, set[str]]] = {}
    requests: ClassVar[list[dict[str, list[str]]]] = []

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.requests.append(form)
        principal = form["PolicySourceArn"][0]
        resources = [v[0] for k, v in sorted(form.items()) if k.startswith("ResourceArns.member.")] or ["*"]
        members = []
        for key, (action,) in sorted(form.items()):
            if not key.startswith("ActionNames.member."):
                continue
            decision = "allowed" if action in self.allowed.get(principal, set()) else "implicitDeny"
            per = "".join(f"<member><EvalResourceName>{r}</EvalResourceName><EvalResourceDecision>{decision}"
                          "</EvalResourceDecision></member>" for r in resources)
            members.append(f"<member><EvalActionName>{action}</EvalActionName><EvalResourceName>*</EvalResourceName>"
                           f"<EvalDecision>{decision}</EvalDecision><ResourceSpecificResults>{per}"
                           "</ResourceSpecificResults></member>")
        body = ('<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
                "<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated>"
                f"<EvaluationResults>{''.join(members)}</EvaluationResults></SimulatePrincipalPolicyResult>"
                "<ResponseMetadata><RequestId>double</RequestId></ResponseMetadata>"
                "</SimulatePrincipalPolicyResponse>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.usefixtures("real_io")
def test_iam_simulation_outside_the_sandbox() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), IamSimulatorDouble)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = load_env("staging")
        role = f"arn:aws:iam::{cfg.account_id}:role/bastionless-staging-developer"
        IamSimulatorDouble.allowed = {role: {"ssm:StartSession"}}
        IamSimulatorDouble.requests = []
        doctor = _Doctor(cfg)
        doctor._clients["iam"] = boto3.client(
            "iam", region_name=cfg.region, endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            aws_access_key_id="testing", aws_secret_access_key="testing")
        doctor.identity = {"Account": cfg.account_id, "UserId": "AROAEXAMPLE:alice",
                           "Arn": f"arn:aws:sts::{cfg.account_id}:assumed-role/bastionless-staging-developer/alice"}
        doctor.relay = {"InstanceId": "i-0123456789abcdef0"}
        doctor.iam()
    finally:
        server.shutdown()
        server.server_close()
    by_name = {r.name: r for r in doctor.results}
    assert by_name["ssm:StartSession"].status == "pass"
    assert "SCPs are not evaluated" in by_name["ssm:StartSession"].detail
    assert by_name["ecs:ExecuteCommand"].status == "fail"
    assert "bastionless-staging-developer" in by_name["ecs:ExecuteCommand"].fix
    start, execute = IamSimulatorDouble.requests
    assert start["PolicySourceArn"] == [role]
    assert start["ResourceArns.member.1"] == ["arn:aws:ec2:eu-west-1:111111111111:instance/i-0123456789abcdef0"]
    # The env's own port document (host and port fixed to the database), not the generic one.
    assert start["ResourceArns.member.2"] == [
        "arn:aws:ssm:eu-west-1:111111111111:document/bastionless-staging-database"]
    assert execute["ContextEntries.member.1.ContextKeyName"] == ["ecs:cluster"]
    assert execute["ContextEntries.member.1.ContextKeyValues.member.1"] == [
        "arn:aws:ecs:eu-west-1:111111111111:cluster/bastionless-staging"]


@pytest.mark.parametrize(("system", "instance", "status"), [
    ("ok", "ok", "pass"),
    ("impaired", "ok", "fail"),
    ("ok", "impaired", "fail"),
    ("initializing", "initializing", "warn"),
    ("unknown", "unknown", "warn"),
])
def test_relay_status_checks(system: str, instance: str, status: str) -> None:
    from ops.doctor import status_check_verdict

    cfg = load_env("prod")
    verdict, detail, fix = status_check_verdict(cfg, system, instance)
    assert verdict == status and f"system {system}, instance {instance}" in detail
    if status == "fail":
        assert "invoke relay-restart --env prod" in fix and "invoke relay-replace --env prod" in fix
    if status == "pass":
        assert fix == ""


def test_storage_full_advice_grows_the_storage_instead_of_waiting() -> None:
    from ops.config import load_env
    from ops.doctor import _Doctor

    doctor = _Doctor(load_env("prod"))
    fix = doctor._status_fix({"DBInstanceIdentifier": "bastionless-prod", "AllocatedStorage": 100}, "storage-full")
    assert "wait" not in fix
    assert ("aws rds modify-db-instance --db-instance-identifier bastionless-prod --allocated-storage 125 "
            "--apply-immediately --region eu-west-1") in fix
    assert "max_allocated_storage_gb" in fix and "invoke runbook database-unhealthy" in fix
    # Small volumes grow by at least 10 GB.
    assert "--allocated-storage 30 " in doctor._status_fix({"AllocatedStorage": 20}, "storage-full")
    assert doctor._status_fix({}, "modifying").startswith("wait until it is available")
    assert "start-db-instance" in doctor._status_fix({}, "stopped")


def test_patch_state_verdicts() -> None:
    from ops.config import load_env
    from ops.doctor import _Doctor

    class FakeSsm:
        def __init__(self, states: list[dict[str, object]]) -> None:
            self.states = states

        def describe_instance_patch_states(self, InstanceIds: list[str]) -> dict[str, object]:
            return {"InstancePatchStates": self.states}

    def verdict(states: list[dict[str, object]]) -> tuple[str, str]:
        doctor = _Doctor(load_env("prod"))
        doctor._clients["ssm"] = FakeSsm(states)
        doctor._patch_state("i-1")
        (result,) = doctor.results
        return result.status, result.detail

    assert verdict([{"MissingCount": 0, "FailedCount": 0, "Operation": "Scan"}])[0] == "pass"
    status, detail = verdict([{"MissingCount": 3, "FailedCount": 0, "Operation": "Scan"}])
    assert status == "fail" and "missing 3" in detail
    assert verdict([{"MissingCount": 0, "FailedCount": 1}])[0] == "fail"
    assert verdict([{"InstalledPendingRebootCount": 2}])[0] == "warn"
    assert verdict([])[0] == "warn", "never scanned is not healthy"
