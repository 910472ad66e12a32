"""Bad input to the deploy and sandbox tasks: one clear line naming the fix, a non-zero exit, nothing changed."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

import cli._common
from cli import deploy as deploy_cli
from ops import deploy
from ops.config import load_env
from ops.errors import AccountMismatchError
from tests.cli_support import run_invoke
from tests.sandbox_support import error_line, invoke
from tests.ssm_support import moto_process


def test_unknown_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_invoke("deploy", "--env", "nope", "--yes", monkeypatch=monkeypatch, capsys=capsys,
                        BASTIONLESS_STATE_DIR=str(tmp_path))
    assert result.returncode == 1
    line = result.error_line()
    assert "unknown environment 'nope'" in line and "copy envs/staging.toml to envs/nope.toml" in line


def test_malformed_toml_through_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's envs/ is shared by every test: the broken file lives in a private envs dir."""
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "broken.toml").write_text('account_id = "123456789012"\nregion = "us-east-1\n')
    monkeypatch.setattr(cli._common, "load_env", functools.partial(load_env, directory=envs))
    for task, kwargs in ((deploy_cli.deploy, {"yes": True}), (deploy_cli.plan, {}), (deploy_cli.destroy, {}),
                         (deploy_cli.outputs, {})):
        with pytest.raises(Exit) as exc:
            task.body(Context(), env="broken", **kwargs)
        assert exc.value.code == 1
        message = str(exc.value.message)
        assert message.startswith("error: ") and "broken.toml: not valid TOML" in message and "\n" not in message
        assert "fix the syntax at that position" in message


@pytest.mark.usefixtures("real_io")
def test_terraform_missing_is_reported_before_anything_else(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for action in (("deploy", "--env", "sandbox", "--yes"), ("plan", "--env", "sandbox"),
                   ("destroy", "--env", "sandbox", "--yes")):
        proc = invoke(*action, state=tmp_path / "state", PATH=str(bare))
        assert proc.returncode == 1, proc.stderr
        line = error_line(proc)
        assert "terraform is not on PATH" in line and "install Terraform >= 1.10" in line
    assert not (tmp_path / "state" / "terraform").exists()


@pytest.mark.usefixtures("real_io")
def test_provider_mirror_missing(tmp_path: Path) -> None:
    mirror = tmp_path / "no-mirror"
    proc = invoke("deploy", "--env", "sandbox", "--yes", state=tmp_path / "state",
                  BASTIONLESS_PROVIDER_MIRROR=str(mirror))
    assert proc.returncode == 1
    line = error_line(proc)
    assert f"the provider mirror {mirror} (from BASTIONLESS_PROVIDER_MIRROR) does not exist" in line
    assert "terraform providers mirror" in line


@pytest.mark.usefixtures("real_io")
def test_sandbox_not_running(tmp_path: Path) -> None:
    proc = invoke("deploy", "--env", "sandbox", "--yes", state=tmp_path / "state")
    assert proc.returncode == 1
    assert error_line(proc) == "error: the sandbox is not running; next: invoke sandbox up"


@pytest.fixture
def foreign_moto(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """moto answering as another AWS account (what wrong credentials look like), as the sandbox's API."""
    state = tmp_path / "state"
    state.mkdir()
    with moto_process(state / "m.log", account_id="111111111111") as url:
        (state / "endpoints.json").write_text(json.dumps({"default": url}))
        yield state, url


@pytest.mark.slow
def test_account_guard_refuses_before_terraform_changes_anything(foreign_moto: tuple[Path, str]) -> None:
    state, url = foreign_moto
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=url,  # type: ignore[call-overload]
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    vpcs = len(ec2.describe_vpcs()["Vpcs"])
    for action in (("deploy", "--env", "sandbox", "--yes"), ("plan", "--env", "sandbox"),
                   ("destroy", "--env", "sandbox", "--yes")):
        proc = invoke(*action, state=state)
        assert proc.returncode == 1, proc.stderr
        assert error_line(proc) == (
            "error: your credentials are for AWS account 111111111111 but sandbox.toml is for account 123456789012; "
            "nothing was changed; next: switch credentials to account 123456789012 (e.g. export AWS_PROFILE=...)")
    assert len(ec2.describe_vpcs()["Vpcs"]) == vpcs, "no resources were created"
    assert not (state / "terraform").exists(), "terraform never ran (no data dir, no state)"


@pytest.mark.slow
def test_account_guard_in_ops_for_an_env_with_another_account(foreign_moto: tuple[Path, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    state, _ = foreign_moto
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(state))
    cfg = replace(load_env("sandbox"), account_id="999999999999")
    for call in (lambda: deploy.deploy(cfg, yes=True), lambda: deploy.plan(cfg),
                 lambda: deploy.destroy(cfg, yes=True)):
        with pytest.raises(AccountMismatchError, match=r"account 111111111111 but sandbox\.toml is for account 9999"):
            call()
    assert not (state / "terraform").exists()



@pytest.mark.parametrize(("changes", "flag", "code"), [(True, True, 2), (False, True, 0), (True, False, 0)])
def test_plan_detailed_exitcode_passes_terraforms_answer_through(changes: bool, flag: bool, code: int,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`invoke plan --detailed-exitcode` exits 2 with changes, 0 without (the sandbox's no-op deploy is the
    deployed stack's "no changes"; this is the flag's way from the command line to terraform and back)."""
    asked: list[bool] = []

    def plan(cfg: object, *, detailed_exitcode: bool, verbose: bool) -> int:
        asked.append(detailed_exitcode)
        return 2 if changes and detailed_exitcode else 0

    monkeypatch.setattr(deploy, "plan", plan)
    result = run_invoke("plan", "--env", "sandbox", *(["--detailed-exitcode"] if flag else []),
                        monkeypatch=monkeypatch, capsys=capsys)
    assert (result.returncode, asked) == (code, [flag]), result.stderr
