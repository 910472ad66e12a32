"""Deploy confirmation, output formatting and the sandbox-only terraform environment (no AWS, no terraform)."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ops import deploy, terraform
from ops.config import load_env
from ops.errors import AbortedError, OpsError
from tests.conftest import stand_in_for_terraform


def _answers(*lines: str) -> tuple[list[str], deploy.Ask]:
    prompts: list[str] = []
    queue = list(lines)

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return queue.pop(0)

    return prompts, ask


def test_prod_needs_the_environment_name_typed() -> None:
    prod = load_env("prod")
    prompts, ask = _answers("prod")
    deploy.confirm(prod, action="Apply these changes to", account="222222222222", ask=ask, what="deploy")
    assert "Type the environment name (prod)" in prompts[0] and "222222222222" in prompts[0]
    for wrong in ("y", "yes", "PROD", " prod", ""):
        _, ask = _answers(wrong)
        with pytest.raises(AbortedError, match=r"^deploy on prod cancelled; nothing was changed$"):
            deploy.confirm(prod, action="Apply these changes to", account="222222222222", ask=ask, what="deploy")


@pytest.mark.parametrize(("answer", "ok"), [("y", True), ("YES", True), ("", False), ("n", False), ("staging", False)])
def test_other_envs_ask_yes_no_defaulting_to_no(answer: str, ok: bool) -> None:
    prompts, ask = _answers(answer)
    if ok:
        deploy.confirm(load_env("staging"), action="Apply these changes to", account="1", ask=ask, what="deploy")
    else:
        with pytest.raises(AbortedError):
            deploy.confirm(load_env("staging"), action="Apply these changes to", account="1", ask=ask, what="deploy")
    assert prompts[0].endswith("[y/N] ")


def test_closed_stdin_is_a_refusal_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(AbortedError) as exc:
        deploy.ask_terminal("? ")
    assert "--yes" in exc.value.next_step


def test_a_piped_answer_is_refused_even_the_right_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # `echo y | invoke deploy` used to apply; one mechanism now: a terminal answer or --yes.
    monkeypatch.setattr(sys, "stdin", io.StringIO("prod\n"))
    with pytest.raises(AbortedError, match="a piped answer is not accepted") as exc:
        deploy.ask_terminal("? ")
    assert exc.value.next_step == "rerun in a terminal, or pass --yes for automation"


def test_outputs_table_and_json() -> None:
    values = {"db_port": 5432, "db_address": "db.example", "developer_policy_json": '{"a": [1, 2]}'}
    table = deploy.format_outputs(values)
    assert table.splitlines()[0].split() == ["db_address", "db.example"]
    assert "developer_policy_json  {\"a\":[1,2]}" in table
    assert json.loads(deploy.format_outputs(values, as_json=True)) == values
    assert "not deployed" in deploy.format_outputs({})


def test_sandbox_env_points_terraform_at_the_emulator_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path))
    (tmp_path / "endpoints.json").write_text(json.dumps({"default": "http://127.0.0.1:1234",
                                                         "ssm": "http://127.0.0.1:99"}))
    env = {"AWS_PROFILE": "prod-admin", "AWS_SESSION_TOKEN": "tok", "AWS_ENDPOINT_URL_S3": "http://x", "KEEP": "1"}
    terraform.apply_sandbox_env(env, load_env("sandbox"))
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234", "terraform talks to moto, not the SSM proxy"
    assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env and "AWS_ENDPOINT_URL_S3" not in env
    assert env["KEEP"] == "1"
    with pytest.raises(ValueError, match="not a sandbox"):
        terraform.apply_sandbox_env({}, load_env("prod"))


def test_terraform_runs_with_a_lazier_go_collector_unless_the_user_set_one() -> None:
    env = terraform.child_env({"PATH": "/bin", "TF_IN_AUTOMATION": "0"}, {"TF_LOG": "info"})
    assert env["GOGC"] == "400" and env["GOMEMLIMIT"] == "1GiB"
    assert env["TF_IN_AUTOMATION"] == "1" and env["CHECKPOINT_DISABLE"] == "1"
    assert env["PATH"] == "/bin" and env["TF_LOG"] == "info"
    mine = terraform.child_env({"GOGC": "100"}, {"GOMEMLIMIT": "512MiB"})
    assert mine["GOGC"] == "100" and mine["GOMEMLIMIT"] == "512MiB", "the user's own setting wins"


def test_only_aws_runs_of_a_sandbox_env_get_the_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prod never gets endpoints; a sandbox run that needs AWS fails with the fix when the sandbox is down."""
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path / "state"))
    work = tmp_path / "stack"
    work.mkdir()
    (work / "cdk.tf.json").write_text(json.dumps(
        {"terraform": {"required_providers": {"aws": {"source": "aws", "version": "5.100.0"}}}}))
    prod = terraform.Terraform(load_env("prod"), work)
    monkeypatch.setattr(prod, "_prepared_env", {"PATH": "/bin"})
    assert "AWS_ENDPOINT_URL" not in prod._env()
    box = terraform.Terraform(load_env("sandbox"), work)
    monkeypatch.setattr(box, "_prepared_env", {"PATH": "/bin"})
    assert "AWS_ENDPOINT_URL" not in box._env(backend=False), "validate works without the sandbox"
    from ops.aws import SandboxNotRunningError

    with pytest.raises(SandboxNotRunningError) as exc:
        box._env()
    assert exc.value.next_step == "invoke sandbox up"
    staging = replace(load_env("sandbox"), sandbox=False)
    assert "AWS_ENDPOINT_URL" not in _prepared(terraform.Terraform(staging, work))._env()


def _prepared(tf: terraform.Terraform) -> terraform.Terraform:
    tf._prepared_env = {"PATH": "/bin"}
    return tf


def test_the_local_backend_state_is_read_from_its_file_without_terraform(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test: running terraform here would fail it (tests/tiers.py). tests/test_terraform_run.py
    checks the same document against `terraform state pull`."""
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path / "state"))
    tf = terraform.Terraform(load_env("sandbox"), tmp_path)
    assert tf.state() == {}, "no state yet"
    tf.local_state_path.parent.mkdir(parents=True)
    tf.local_state_path.write_text(json.dumps({"version": 4, "serial": 3, "resources": []}))
    assert tf.state() == {"version": 4, "serial": 3, "resources": []}
    tf.local_state_path.write_text("{not json")
    with pytest.raises(OpsError, match=r"the state file .*sandbox\.tfstate is not JSON"):
        tf.state()


class _DestroyTerraform:
    """Stands in for ops.terraform.Terraform in destroy: a plan with deletions, and a record of applies."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.applied: list[Path | None] = []

    def plan(self, *, detailed_exitcode: bool = False, destroy: bool = False, out: Path | None = None) -> int:
        assert destroy and detailed_exitcode and out is not None
        out.write_text("plan")
        return 2

    def apply(self, *, plan_file: Path | None = None) -> None:
        self.applied.append(plan_file)


class _Rds:
    def __init__(self) -> None:
        self.modified: list[dict[str, object]] = []

    def modify_db_instance(self, **kwargs: object) -> None:
        self.modified.append(kwargs)


@pytest.fixture()
def destroy_bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[_DestroyTerraform, _Rds]:
    """ops.deploy.destroy of a sandbox whose database has deletion protection on, AWS and terraform stood in."""
    tf, rds = _DestroyTerraform(tmp_path), _Rds()
    stand_in_for_terraform(monkeypatch, tf, tmp_path)
    monkeypatch.setattr(deploy, "database_protection", lambda cfg: ("bastionless-sandbox", True))
    monkeypatch.setattr(deploy.aws, "client", lambda cfg, service: rds)
    return tf, rds


def test_destroy_with_deletion_protection_needs_the_flag_and_the_identifier(
        destroy_bed: tuple[_DestroyTerraform, _Rds]) -> None:
    """The sandbox e2e destroy proves the right identifier on the real stack; this proves every refusal."""
    tf, rds = destroy_bed
    cfg = load_env("sandbox")
    with pytest.raises(OpsError, match="has deletion protection on, so sandbox is not destroyed; nothing was changed"
                       ) as refused:
        deploy.destroy(cfg, yes=True, out=io.StringIO())
    assert refused.value.next_step == "if you really mean to delete it: invoke destroy --env sandbox " \
                                      "--force-deletion-protection"
    for wrong in ("bastionless", "", "BASTIONLESS-SANDBOX", "y"):
        prompts, ask = _answers(wrong)
        with pytest.raises(AbortedError, match=r"^destroy of sandbox cancelled; nothing was changed$"):
            deploy.destroy(cfg, yes=True, force_deletion_protection=True, ask=ask, out=io.StringIO())
        assert "Type its identifier (bastionless-sandbox)" in prompts[0]
    assert rds.modified == [] and tf.applied == [], "a wrong identifier changes nothing"
    assert not (tf.workdir / "destroy.tfplan").exists(), "the saved plan is removed"

    _, ask = _answers("bastionless-sandbox")
    deploy.destroy(cfg, yes=True, force_deletion_protection=True, ask=ask, out=io.StringIO())
    assert rds.modified == [{"DBInstanceIdentifier": "bastionless-sandbox", "DeletionProtection": False,
                             "ApplyImmediately": True}]
    assert tf.applied == [tf.workdir / "destroy.tfplan"], "the plan shown is the plan applied"


@pytest.mark.parametrize("adopted", [True, False])
def test_the_plan_after_an_adoption_does_not_read_the_state_back(adopted: bool, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's adoption (ops/sandbox/fast_rds.py) has just written every object of the state; any other
    deploy plans with a refresh, to find drift."""
    plans: list[dict[str, object]] = []

    class Tf:
        def plan(self, **kwargs: object) -> int:
            plans.append(kwargs)
            return 0

    stand_in_for_terraform(monkeypatch, Tf(), tmp_path)
    hooks = deploy.Hooks(adopt=lambda cfg, tf, out: adopted)
    result = deploy.deploy(load_env("sandbox"), yes=True, hooks=hooks, out=io.StringIO())
    assert [p["refresh"] for p in plans] == [not adopted]
    assert result.changed is adopted
