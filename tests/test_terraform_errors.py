"""Missing or unusable tools give one clear line naming the fix, before terraform changes anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ops.config import TerraformConfig, load_env
from ops.errors import ToolMissingError
from ops.terraform import Terraform, cli_config
from tests.cli_support import run_invoke
from tests.conftest import PROJECT_ROOT
from tests.tiers import needs_tool

AWS_PIN = {"terraform": {"required_providers": {"aws": {"source": "aws", "version": "5.100.0"}},
                         "backend": {"local": {}}}}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "stack"
    path.mkdir()
    (path / "cdk.tf.json").write_text(json.dumps(AWS_PIN))
    return path


needs_terraform = needs_tool("terraform")


@pytest.mark.usefixtures("real_io")
@needs_terraform
def test_missing_mirror_directory(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTIONLESS_PROVIDER_MIRROR", str(tmp_path / "no-such-mirror"))
    with pytest.raises(ToolMissingError) as exc:
        Terraform(load_env("sandbox"), workdir).init()
    msg = exc.value.message
    assert f"the provider mirror {tmp_path / 'no-such-mirror'} (from BASTIONLESS_PROVIDER_MIRROR) does not exist" in msg
    assert "terraform providers mirror" in msg and "unset BASTIONLESS_PROVIDER_MIRROR" in msg
    assert "\n" not in msg


@pytest.mark.usefixtures("real_io")
@needs_terraform
@pytest.mark.parametrize("present", [None, "5.99.0"])
def test_mirror_without_the_needed_provider_version(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    present: str | None) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    if present:
        (mirror / "registry.terraform.io" / "hashicorp" / "aws" / present / "linux_amd64").mkdir(parents=True)
        (mirror / "registry.terraform.io/hashicorp/aws" / present / "linux_amd64" / "terraform-provider-aws").touch()
    monkeypatch.setenv("BASTIONLESS_PROVIDER_MIRROR", str(mirror))
    with pytest.raises(ToolMissingError) as exc:
        Terraform(load_env("sandbox"), workdir).init()
    msg = exc.value.message
    assert "has no registry.terraform.io/hashicorp/aws 5.100.0" in msg
    assert "terraform providers mirror -platform=" in msg and "terraform-provider-aws 5.100.0" in msg
    if present:
        assert f"(it has: {present})" in msg


@pytest.mark.usefixtures("real_io")
@needs_terraform
def test_mirror_from_the_env_file_wins_and_is_named(workdir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTIONLESS_PROVIDER_MIRROR", "/opt/tf-plugins")
    cfg = replace(load_env("sandbox"), terraform=TerraformConfig(provider_mirror=str(tmp_path / "cfg-mirror")))
    with pytest.raises(ToolMissingError, match=r"from \[terraform\] provider_mirror in sandbox.toml"):
        Terraform(cfg, workdir).init()


def test_cli_config_sends_only_mirrored_providers_to_the_mirror(tmp_path: Path) -> None:
    text = cli_config(tmp_path, {"registry.terraform.io/hashicorp/aws": "5.100.0"})
    assert f'path    = "{tmp_path}"' in text
    assert 'include = ["registry.terraform.io/hashicorp/aws"]' in text
    assert 'exclude = ["registry.terraform.io/hashicorp/aws"]' in text


def test_terraform_not_on_path(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolMissingError) as exc:
        Terraform(load_env("sandbox"), workdir).validate()
    assert exc.value.message.startswith("terraform is not on PATH; install Terraform >= 1.10")


@pytest.mark.usefixtures("real_io")
def test_terraform_too_old(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for an old terraform release (none can be installed offline): it answers
    # `terraform version -json` exactly as terraform 1.4 does and fails anything else.
    bindir = tmp_path / "old-bin"
    bindir.mkdir()
    fake = bindir / "terraform"
    fake.write_text("#!/bin/sh\n"
                    "if [ \"$1\" = version ]; then\n"
                    "  echo '{\"terraform_version\": \"1.4.6\", \"platform\": \"linux_amd64\", "
                    "\"provider_selections\": {}, \"terraform_outdated\": true}'\n"
                    "  exit 0\nfi\necho 'this stand-in only answers version' >&2\nexit 99\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ToolMissingError) as exc:
        Terraform(load_env("sandbox"), workdir).init()
    assert exc.value.message == f"terraform 1.4.6 at {fake} is too old; install Terraform >= 1.10 " \
                                "(https://developer.hashicorp.com/terraform/install) and put it on PATH"


def _invoke(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_validate_task_without_terraform_is_one_line_before_any_synth(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing on PATH at all: the check must come before synth (which would need node). In-process, so
    # the unit-tier guard also proves that no child (terraform, the synth app) was started.
    result = run_invoke("validate", "--env", "sandbox", monkeypatch=monkeypatch, capsys=capsys, PATH=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: terraform is not on PATH; install Terraform >= 1.10 "
        "(https://developer.hashicorp.com/terraform/install) and put it on PATH"]
    assert "synthesizing" not in result.stdout + result.stderr


@pytest.mark.usefixtures("real_io")
@needs_terraform
def test_validate_task_with_a_missing_mirror_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "BASTIONLESS_PROVIDER_MIRROR": str(tmp_path / "gone")}
    proc = _invoke("validate", "--env", "sandbox", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the provider mirror {tmp_path / 'gone'}"), proc.stderr
