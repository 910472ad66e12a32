"""End to end, as a user types it: sandbox up, deploy, a plan with no changes, outputs, destroy, sandbox down.

Everything is real: moto server over HTTP as AWS, terraform with the AWS provider applying the same
stack as prod, PostgreSQL on loopback with the password from the emulated Secrets Manager.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import psycopg
import pytest

from ops.facts import OUTPUT_NAMES
from ops.sandbox import procs
from tests.sandbox_support import assert_nothing_running, error_line, invoke, records_in

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("terraform_bin")]

OUTPUTS = set(OUTPUT_NAMES)


def _aws(service: str, url: str) -> object:
    return boto3.client(service, region_name="us-east-1", endpoint_url=url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_sandbox_deploy_plan_outputs_destroy_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seen: list[procs.ProcRecord] = []
    try:
        up = invoke("sandbox", "up", "--no-deploy", state=state)
        assert up.returncode == 0, up.stderr
        seen += records_in(state)
        moto_url = json.loads((state / "endpoints.json").read_text())["default"]

        deploy = invoke("deploy", "--env", "sandbox", "--yes", state=state)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        # The screen has the one-line result; terraform's own "Apply complete!" is in the log file.
        assert re.search(r"sandbox: apply complete in [\d.]+ s: \d+ added", deploy.stderr), deploy.stderr[-3000:]

        plan = invoke("plan", "--env", "sandbox", "--detailed-exitcode", state=state)
        assert plan.returncode == 0, "a second plan must show no changes:\n" + plan.stdout[-4000:]

        out = invoke("outputs", "--env", "sandbox", "--json", state=state)
        assert out.returncode == 0, out.stderr
        values = json.loads(out.stdout)
        assert set(values) == OUTPUTS
        assert values["db_identifier"] == "bastionless-sandbox" and values["ecs_cluster_name"] == "bastionless-sandbox"

        # Credentials as in prod: the RDS-managed secret's password opens the database behind the relay.
        secret = json.loads(_aws("secretsmanager", moto_url).get_secret_value(  # type: ignore[attr-defined]
            SecretId=values["db_secret_arn"])["SecretString"])
        assert set(secret) == {"username", "password"} and secret["username"] == "app_admin"
        target = json.loads((state / "relay_hosts.json").read_text())[f"{values['db_address']}:{values['db_port']}"]
        host, port = target.split(":")
        with psycopg.connect(host=host, port=int(port), user=secret["username"], password=secret["password"],
                             dbname=values["db_name"], connect_timeout=5) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == ("app_admin", "app")

        # Deletion protection: destroy refuses; the override needs the flag AND the identifier typed.
        rds = _aws("rds", moto_url)
        rds.modify_db_instance(DBInstanceIdentifier="bastionless-sandbox",  # type: ignore[attr-defined]
                               DeletionProtection=True, ApplyImmediately=True)
        refused = invoke("destroy", "--env", "sandbox", "--yes", state=state)
        assert refused.returncode == 1
        assert "has deletion protection on" in error_line(refused)
        assert "--force-deletion-protection" in error_line(refused)
        wrong = invoke("destroy", "--env", "sandbox", "--yes", "--force-deletion-protection", state=state,
                       stdin="bastionless\n")
        assert wrong.returncode == 1 and "cancelled; nothing was changed" in error_line(wrong)
        assert rds.describe_db_instances()["DBInstances"][0]["DeletionProtection"]  # type: ignore[attr-defined]

        destroy = invoke("destroy", "--env", "sandbox", "--yes", "--force-deletion-protection", state=state,
                         stdin="bastionless-sandbox\n")
        assert destroy.returncode == 0, destroy.stdout[-3000:] + destroy.stderr[-3000:]
        assert re.search(r"sandbox: destroy complete in [\d.]+ s: .*\b\d+ destroyed", destroy.stderr), destroy.stderr
        assert re.search(r"^\s+DESTROY\s+aws_db_instance\.", destroy.stderr, re.MULTILINE), "deletions are named"
        assert rds.describe_db_instances()["DBInstances"] == []  # type: ignore[attr-defined]
        after = invoke("outputs", "--env", "sandbox", "--json", state=state)
        assert after.returncode == 0 and json.loads(after.stdout) == {}
    finally:
        down = invoke("sandbox", "down", state=state)
    assert down.returncode == 0, down.stderr
    assert_nothing_running(seen)
