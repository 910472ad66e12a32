"""End to end, as a newcomer types it: the virtual environment activated (no ./dev), no mirror variable,
this offline machine. `sandbox up` from a fresh state dir (services and the first deploy: the session's
shared sandbox is built exactly so, tests/sandbox_fixtures.py), `validate`, a no-op `deploy` (the second
plan finds no changes), outputs, the database behind the relay, and, once every test that reads the sandbox is done,
destroy (refused while deletion protection is on), then `sandbox down` and nothing left running.

Everything is real: moto server over HTTP as AWS, terraform with the AWS provider applying the same
stack as prod, PostgreSQL on loopback with the password from the emulated Secrets Manager. Each command
stays within its line budget, prints no escape codes when not on a terminal, and leaves terraform's
whole output in the log file whose path it prints. (The shared sandbox's deploy is the first run these
tests check: a fresh deploy of their own cost the suite three minutes.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import psycopg
import pytest

from ops.facts import OUTPUT_NAMES, RELAY_HOSTS_FILE
from ops.sandbox import manager, procs
from tests.proc_support import proc_stat
from tests.sandbox_support import Sandbox, activated_env, error_line, invoke, invoke_activated

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("terraform_bin")]

OUTPUTS = set(OUTPUT_NAMES)
UP_BUDGET = 31  # 30 until the status table gained the AWS provider server's row
DEPLOY_BUDGET = 10
HEARTBEAT = re.compile(r"^\d\d:\d\d:\d\d terraform .*: \d+/\d+ done")


def _aws(service: str, url: str) -> object:
    return boto3.client(service, region_name="us-east-1", endpoint_url=url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_a_newcomers_first_runs_stay_within_their_budgets(sandbox: Sandbox) -> None:
    up = list(sandbox.up_lines)
    shown = "\n".join(up)
    # Heartbeats ("hh:mm:ss terraform apply ...: n/m done") come every 15 s of a long wait, so a slower
    # machine prints more of them; the budget is for everything else.
    said = [ln for ln in up if not HEARTBEAT.match(ln)]
    assert len(said) <= UP_BUDGET, f"`invoke sandbox up` printed {len(said)} lines besides heartbeats " \
                                   f"(budget {UP_BUDGET}):\n{shown}"
    assert re.search(r"plan for sandbox: \d+ to create", shown), shown
    # The screen has the one-line result; terraform's own "Apply complete!" is in the log file.
    assert re.search(r"sandbox: apply complete in \d+\.\d s: \d+ added, 0 changed, 0 destroyed", shown), shown
    logs = [Path(m) for m in re.findall(r"^terraform's output: (\S+)$", shown, re.MULTILINE)]
    assert logs and all(p.is_file() for p in logs), shown
    full = "".join(p.read_text() for p in logs)
    assert "Apply complete! Resources:" in full and "Creation complete after" in full, "the log has it all"
    assert "Creation complete after" not in shown
    print(f"--- invoke sandbox up ({len(up)} lines)\n{shown}")

    env = activated_env(sandbox.state_dir)
    code, validate = invoke_activated(env, "validate", "-e", "sandbox")
    assert code == 0 and "valid" in validate, "\n".join(validate)

    # The second plan of the deployed stack (terraform refreshes every object) must find nothing to change;
    # `plan --detailed-exitcode`'s exit codes are tests/test_deploy_errors.py's.
    server = procs.read_json(sandbox.state_dir / manager.STATE_FILE)["provider"]["pid"]  # type: ignore[index]
    before = proc_stat(server)
    code, deploy = invoke_activated(env, "deploy", "-e", "sandbox", "--yes")
    shown = "\n".join(deploy)
    assert code == 0, shown
    after = proc_stat(server)
    # ~1 s of CPU for the provider's schema and the refresh: terraform reattached to the server.
    assert before is not None and after is not None and after.cpu_seconds - before.cpu_seconds >= 0.2, \
        "the plan ran in the sandbox's AWS provider server (ops/sandbox/provider_server.py)"
    assert len(deploy) <= DEPLOY_BUDGET, f"a no-op deploy printed {len(deploy)} lines:\n{shown}"
    assert "sandbox: no changes; the infrastructure matches the configuration" in deploy, shown
    print(f"--- invoke deploy, no changes ({len(deploy)} lines)\n{shown}")


def test_outputs_and_the_database_behind_the_relay(sandbox: Sandbox) -> None:
    state = sandbox.state_dir
    out = invoke("outputs", "--env", "sandbox", "--json", state=state)
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout)
    assert set(values) == OUTPUTS
    assert values["db_identifier"] == "bastionless-sandbox" and values["ecs_cluster_name"] == "bastionless-sandbox"

    # Credentials as in prod: the RDS-managed secret's password opens the database behind the relay.
    secret = json.loads(_aws("secretsmanager", sandbox.moto_url).get_secret_value(  # type: ignore[attr-defined]
        SecretId=values["db_secret_arn"])["SecretString"])
    assert set(secret) == {"username", "password"} and secret["username"] == "app_admin"
    target = json.loads((state / RELAY_HOSTS_FILE).read_text())[f"{values['db_address']}:{values['db_port']}"]
    host, port = target.split(":")
    with psycopg.connect(host=host, port=int(port), user=secret["username"], password=secret["password"],
                         dbname=values["db_name"], connect_timeout=5) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == ("app_admin", "app")


@pytest.fixture(scope="module", autouse=True)
def _destroy_at_the_end(sandbox_session: Sandbox) -> None:
    """The destroy ends the shared sandbox's life: it runs after every test of the session (then `down`)."""
    if _check_destroy not in sandbox_session.at_end:
        sandbox_session.at_end.append(_check_destroy)


def _check_destroy(box: Sandbox) -> None:
    state = box.state_dir
    # Deletion protection: destroy refuses; the override needs the flag AND the identifier, typed on a terminal.
    rds = _aws("rds", box.moto_url)
    rds.modify_db_instance(DBInstanceIdentifier="bastionless-sandbox",  # type: ignore[attr-defined]
                           DeletionProtection=True, ApplyImmediately=True)
    refused = invoke("destroy", "--env", "sandbox", "--yes", state=state)
    assert refused.returncode == 1
    assert "has deletion protection on" in error_line(refused)
    assert "--force-deletion-protection" in error_line(refused)
    # A wrong identifier typed: tests/test_deploy_confirm.py (same code path; a destroy plan here costs ~6 s of CPU).
    destroy = invoke("destroy", "--env", "sandbox", "--yes", "--force-deletion-protection", state=state,
                     stdin="bastionless-sandbox\n")
    assert destroy.returncode == 0, destroy.stdout[-3000:] + destroy.stderr[-3000:]
    assert re.search(r"sandbox: destroy complete in [\d.]+ s: .*\b\d+ destroyed", destroy.stderr), destroy.stderr
    assert re.search(r"^\s+DESTROY\s+aws_db_instance\.", destroy.stderr, re.MULTILINE), "deletions are named"
    assert rds.describe_db_instances()["DBInstances"] == []  # type: ignore[attr-defined]
    after = invoke("outputs", "--env", "sandbox", "--json", state=state)
    assert after.returncode == 0 and json.loads(after.stdout) == {}
