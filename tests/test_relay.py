"""Relay helpers without AWS: the Terraform address of the relay, and waiting with progress."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from ops.errors import OpsError
from ops.relay import relay_address, wait_for


def test_relay_address_is_found_by_its_role_tag(tmp_path: Path) -> None:
    (tmp_path / "cdk.tf.json").write_text(json.dumps({"resource": {"aws_instance": {
        "Other_1234": {"tags": {"Name": "x"}},
        "Relay_Instance_ABCD": {"tags": {"bastionless:role": "relay", "Name": "bastionless-prod/TunnelInstance"}}}}}))
    assert relay_address(tmp_path) == "aws_instance.Relay_Instance_ABCD"


@pytest.mark.usefixtures("real_io")
def test_relay_address_of_the_real_synthesized_stack() -> None:
    from ops.config import load_env
    from ops.synth import synth

    workdir = synth(load_env("sandbox"))
    address = relay_address(workdir)
    assert address.startswith("aws_instance.") and "Relay" in address


def test_relay_address_without_exactly_one_relay(tmp_path: Path) -> None:
    (tmp_path / "cdk.tf.json").write_text(json.dumps({"resource": {}}))
    with pytest.raises(OpsError, match="found 0"):
        relay_address(tmp_path)
    with pytest.raises(OpsError, match="cannot read"):
        relay_address(tmp_path / "missing")


def test_wait_for_prints_progress_and_returns() -> None:
    values = iter(["ConnectionLost", "ConnectionLost", "Inactive", "Online"])
    out = io.StringIO()
    assert wait_for("i-1 Online", lambda: next(values), lambda v: v == "Online", timeout=10, out=out,
                    interval=0) == "Online"
    lines = out.getvalue().splitlines()
    # Not a terminal: a timestamped line per change of value (not per poll), then the result.
    assert len(lines) == 3, lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d   waiting for i-1 Online: ConnectionLost \(at most 10 s\) \(\d+ s\)", lines[0])
    assert "waiting for i-1 Online: Inactive" in lines[1]
    assert lines[-1].startswith("  i-1 Online: Online")
    assert "\x1b" not in out.getvalue()


def test_wait_for_times_out_with_the_fix() -> None:
    with pytest.raises(OpsError) as info:
        wait_for("i-1 Online", lambda: "ConnectionLost", lambda v: v == "Online", timeout=0, out=io.StringIO(),
                 interval=0, fix="invoke doctor --env prod")
    assert "still ConnectionLost after 0 s" in info.value.message and info.value.next_step == "invoke doctor --env prod"


def test_wait_for_gives_up_on_a_state_that_cannot_change() -> None:
    with pytest.raises(OpsError, match="will not change"):
        wait_for("i-1 running", lambda: "terminated", lambda v: v == "running", timeout=60, out=io.StringIO(),
                 interval=0, fail=lambda v: v == "terminated", fix="invoke relay-replace --env prod")


def test_a_declined_replace_plans_the_replacement_then_changes_nothing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox test replaces the relay for real; this is the "no" at the prompt, AWS and terraform stood in."""
    from ops import relay
    from ops.config import load_env
    from ops.errors import AbortedError
    from tests.conftest import stand_in_for_terraform

    (tmp_path / "cdk.tf.json").write_text(json.dumps({"resource": {"aws_instance": {"Relay_Instance_1": {
        "tags": {"bastionless:role": "relay"}}}}}))
    planned: list[list[str]] = []
    applied: list[object] = []

    class Tf:
        workdir = tmp_path

        def plan(self, *, detailed_exitcode: bool, out: Path, replace: list[str]) -> int:
            planned.append(replace)
            out.write_text("plan")
            return 2

        def apply(self, **kwargs: object) -> None:
            applied.append(kwargs)

    stand_in_for_terraform(monkeypatch, Tf(), tmp_path)
    monkeypatch.setattr(relay, "relay_instances", lambda cfg: [relay.RelayInstance("i-0old", "running", "t")])
    prompts: list[str] = []
    out = io.StringIO()
    with pytest.raises(AbortedError, match=r"^relay replacement on sandbox cancelled; nothing was changed$"):
        relay.replace(load_env("sandbox"), ask=lambda prompt: prompts.append(prompt) or "n", out=out)
    assert planned == [["aws_instance.Relay_Instance_1"]] and applied == []
    assert "Replace the relay (aws_instance.Relay_Instance_1)" in prompts[0]
    assert "open tunnels and shells through the relay will drop" in out.getvalue()
    assert not (tmp_path / "relay-replace.tfplan").exists()
