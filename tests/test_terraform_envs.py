"""Every environment file synthesizes, initializes offline (provider mirror) and passes `terraform validate`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ops.config import available_envs, load_env
from ops.terraform import Terraform, provider_mirror
from tests.tiers import missing_tool, require_tool

ENVS = available_envs()


@pytest.fixture(scope="module")
def workdirs(synth_dirs: dict[str, Path]) -> dict[str, Path]:
    """The session's synthesized environments (tests.stack_fixtures), each with the provider from the mirror."""
    require_tool(shutil.which("terraform"), "terraform is not installed (see README prerequisites)")
    if all(provider_mirror(load_env(n)) is None for n in ENVS):
        # Tests never reach out to the network; without a mirror terraform would download the provider.
        missing_tool("no provider mirror: set BASTIONLESS_PROVIDER_MIRROR to a `terraform providers mirror` directory "
                     "(./dev sets /opt/tf-plugins when present)")
    return synth_dirs


@pytest.mark.slow
@pytest.mark.usefixtures("terraform_bin")
@pytest.mark.parametrize("name", ENVS)
def test_env_synthesizes_inits_offline_and_validates(name: str, workdirs: dict[str, Path]) -> None:
    cfg = load_env(name)
    tf = Terraform(cfg, workdirs[name])
    tf.validate()  # raises CommandFailedError with terraform's exit code on any error
    assert (workdirs[name] / ".terraform.lock.hcl").is_file()
    assert "5.100.0" in (workdirs[name] / ".terraform.lock.hcl").read_text()
    assert tf.cli_config_path.is_file(), "the provider came from the mirror via our CLI config"
    assert str(provider_mirror(cfg)) in tf.cli_config_path.read_text()
    assert os.environ.get("BASTIONLESS_PROVIDER_MIRROR") or cfg.terraform.provider_mirror
