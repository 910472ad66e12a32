"""Every entry point finds a provider mirror at the usual places (not only ./dev), and a failed
`terraform init` names the setting in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops import terraform
from ops.config import load_env
from ops.errors import CommandFailedError
from ops.terraform import MIRROR_ENV, Terraform, discovered_mirror, provider_mirror
from tests.tiers import needs_tool


def _mirror(root: Path) -> Path:
    (root / "registry.terraform.io" / "hashicorp" / "aws").mkdir(parents=True)
    return root


def test_the_first_usual_place_holding_the_aws_provider_wins(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    first, second = _mirror(tmp_path / "first"), _mirror(tmp_path / "second")
    assert discovered_mirror([str(tmp_path / "missing"), str(empty), str(first), str(second)]) == first
    assert discovered_mirror([str(empty)]) is None


def test_provider_mirror_without_a_setting_uses_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = _mirror(tmp_path / "usual")
    monkeypatch.setattr(terraform, "MIRROR_PLACES", (str(tmp_path / "nothing"), str(found)))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    cfg = load_env("sandbox")
    assert provider_mirror(cfg) == found
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "chosen"))
    assert provider_mirror(cfg) == tmp_path / "chosen", "the variable still wins"
    monkeypatch.setenv(MIRROR_ENV, "none")
    assert provider_mirror(cfg) is None, "`none` forces the registry"


@pytest.mark.slow
@needs_tool("terraform")
def test_a_failed_init_without_a_mirror_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, with the registry forced: terraform's own error is shown, and one line says what to set."""
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv(MIRROR_ENV, "none")
    # A provider no mirror here holds, so this fails even on a connected machine's offline twin.
    pin = {"terraform": {"required_providers": {"nothere": {"source": "example.invalid/acme/nothere",
                                                            "version": "1.0.0"}}}}
    workdir = tmp_path / "stack"
    workdir.mkdir()
    (workdir / "cdk.tf.json").write_text(json.dumps(pin))
    with pytest.raises(CommandFailedError) as exc:
        Terraform(load_env("sandbox"), workdir).init()
    message = exc.value.message
    assert message.startswith("terraform init failed for sandbox")
    assert f"offline? terraform downloads providers from the registry unless {MIRROR_ENV}" in message
    assert "\n" not in message
