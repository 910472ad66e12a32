"""The screen view of terraform runs, without terraform: plan table, apply progress, error block,
and the plain (not a terminal) status lines: timestamps, throttling, no escape codes."""

from __future__ import annotations

import io
import os
import pty
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import terraform_view as view
from ops.config import load_env
from ops.console import Status
from ops.terraform import Terraform


def _change(address: str, actions: list[str], **extra: object) -> dict[str, object]:
    kind = address.split(".")[0]
    return {"address": address, "mode": "managed", "type": kind, "change": {"actions": actions, **extra}}


# The shape of `terraform show -json PLAN` (format 1.2): only the fields the summary reads.
SHOW = {
    "format_version": "1.2",
    "resource_changes": [
        _change("aws_vpc.network_vpc_1A2B", ["create"]),
        _change("aws_subnet.network_private_0_C3D4", ["create"]),
        _change("aws_subnet.network_private_1_E5F6", ["create"]),
        _change("aws_security_group.relay_sg_7788", ["update"]),
        _change("aws_instance.relay_instance_99AA", ["delete", "create"]),
        _change("aws_db_instance.database_BBCC", ["delete"]),
        _change("aws_ssm_document.session_prefs", ["no-op"], importing={"id": "SSM-SessionManagerRunShell"}),
        _change("aws_iam_role.unchanged", ["no-op"]),
        {"address": "data.aws_caller_identity.me", "mode": "data", "type": "aws_caller_identity",
         "change": {"actions": ["read"]}},
    ],
}


def test_summary_counts_each_action_and_skips_no_ops_and_reads() -> None:
    summary = view.summarize(SHOW)
    assert [(c.action, c.address) for c in summary.changes] == [
        ("create", "aws_vpc.network_vpc_1A2B"), ("create", "aws_subnet.network_private_0_C3D4"),
        ("create", "aws_subnet.network_private_1_E5F6"), ("update", "aws_security_group.relay_sg_7788"),
        ("replace", "aws_instance.relay_instance_99AA"), ("destroy", "aws_db_instance.database_BBCC"),
        ("import", "aws_ssm_document.session_prefs")]
    assert summary.expected_steps()["aws_instance.relay_instance_99AA"] == 2, "a replacement is two operations"
    assert "aws_ssm_document.session_prefs" not in summary.expected_steps()


# The same plan as SHOW, as `terraform plan -no-color` prints it (a drift report first, which is not the plan).
PLAN_TEXT = """
Note: Objects have changed outside of Terraform

  # aws_security_group.relay_sg_7788 has changed
  ~ resource "aws_security_group" "relay_sg_7788" {
    }

Terraform used the selected providers to generate the following execution plan. Resource actions are
indicated with the following symbols:
  + create

Terraform will perform the following actions:

  # aws_db_instance.database_BBCC will be destroyed
  # (because aws_db_instance.database_BBCC is not in configuration)
  - resource "aws_db_instance" "database_BBCC" {
    }

  # aws_instance.relay_instance_99AA will be replaced, as requested
-/+ resource "aws_instance" "relay_instance_99AA" {
    }

  # aws_security_group.relay_sg_7788 will be updated in-place
  ~ resource "aws_security_group" "relay_sg_7788" {
      ~ description = "a" -> "b"
    }

  # aws_ssm_document.session_prefs will be imported
    resource "aws_ssm_document" "session_prefs" {
    }

  # aws_subnet.network_private_0_C3D4 will be created
  + resource "aws_subnet" "network_private_0_C3D4" {
    }

  # aws_subnet.network_private_1_E5F6 will be created
  + resource "aws_subnet" "network_private_1_E5F6" {
    }

  # aws_vpc.network_vpc_1A2B will be created
  + resource "aws_vpc" "network_vpc_1A2B" {
    }

Plan: 1 to import, 4 to add, 1 to change, 2 to destroy.
""".splitlines()


def test_the_plan_text_gives_the_summary_show_json_gives() -> None:
    from_text = view.summary_from_plan_text(PLAN_TEXT)
    assert from_text is not None
    assert sorted(from_text.changes, key=lambda c: c.address) == sorted(view.summarize(SHOW).changes,
                                                                        key=lambda c: c.address)


@pytest.mark.parametrize("edit", [
    # A header wording this reader does not know: the counts no longer add up.
    ("will be replaced, as requested", "must be replaced, but the existing object will not be destroyed"),
    ("Plan: 1 to import, 4 to add, 1 to change, 2 to destroy.", "Plan: 4 to add, 1 to change, 2 to destroy."),
    ("Plan: 1 to import, 4 to add, 1 to change, 2 to destroy.", "Plan: 1 to import, 4 to add, 1 to change, 2 to "
                                                                "destroy, 1 to forget."),
    ("Terraform will perform the following actions:", "Terraform planned the following actions:"),
])
def test_a_plan_text_that_does_not_add_up_is_not_trusted(edit: tuple[str, str]) -> None:
    text = [line.replace(*edit) for line in PLAN_TEXT]
    assert text != PLAN_TEXT
    assert view.summary_from_plan_text(text) is None


def test_an_import_that_also_updates_counts_as_an_update_and_an_import() -> None:
    text = ["Terraform will perform the following actions:", "",
            "  # aws_ssm_document.prefs will be updated in-place", '  # (imported from "SSM-SessionManagerRunShell")',
            '  ~ resource "aws_ssm_document" "prefs" {', "    }",
            "  # aws_instance.relay (deposed object 1a2b3c4d) will be destroyed", "",
            "Plan: 1 to import, 0 to add, 1 to change, 1 to destroy."]
    summary = view.summary_from_plan_text(text)
    assert summary is not None
    assert [(c.address, c.action) for c in summary.changes] == [("aws_ssm_document.prefs", "update"),
                                                                ("aws_instance.relay", "destroy")]


def _render(summary: view.PlanSummary) -> str:
    out = io.StringIO()
    view.print_plan(out, "prod", summary)
    return out.getvalue()


def test_plan_table_groups_by_kind_and_names_every_replacement_and_deletion() -> None:
    text = _render(view.summarize(SHOW))
    lines = text.splitlines()
    assert lines[0] == "plan for prod: 3 to create, 1 to update, 1 to replace, 1 to destroy, 1 to import"
    assert re.search(r"^\s+create\s+aws_subnet x2, aws_vpc$", text, re.MULTILINE), text
    assert re.search(r"^\s+update\s+aws_security_group$", text, re.MULTILINE), text
    assert re.search(r"^\s+REPLACE\s+aws_instance\.relay_instance_99AA$", text, re.MULTILINE), text
    assert re.search(r"^\s+DESTROY\s+aws_db_instance\.database_BBCC$", text, re.MULTILINE), text
    assert "\x1b" not in text, "not a terminal: no escape codes"


def test_many_deletions_are_all_listed() -> None:
    summary = view.PlanSummary([view.Change(f"aws_subnet.s{i}", "aws_subnet", "destroy") for i in range(40)])
    text = _render(summary)
    assert all(f"aws_subnet.s{i}" in text for i in range(40))


def test_apply_progress_counts_done_of_total_and_shows_the_one_in_flight() -> None:
    progress = view.ApplyProgress(view.summarize(SHOW))
    assert progress.text() == "0/6 done"
    progress.feed("aws_vpc.network_vpc_1A2B: Creating...\n")
    assert progress.text() == "0/6 done; creating aws_vpc.network_vpc_1A2B"
    progress.feed("aws_instance.relay_instance_99AA: Destroying... [id=i-0abc]\n")
    assert progress.text() == "0/6 done; creating aws_vpc.network_vpc_1A2B (+1 more)"
    progress.feed("aws_vpc.network_vpc_1A2B: Creation complete after 1s [id=vpc-1]\n")
    progress.feed("aws_instance.relay_instance_99AA: Destruction complete after 30s\n")
    assert progress.text() == "1/6 done", "the replaced relay is not done until its new instance exists"
    progress.feed("aws_instance.relay_instance_99AA: Still creating... [10s elapsed]\n")
    progress.feed("aws_instance.relay_instance_99AA: Creating...\n")
    progress.feed("aws_instance.relay_instance_99AA: Creation complete after 12s [id=i-0def]\n")
    assert progress.text() == "2/6 done"
    assert progress.feed("Apply complete! Resources: 4 added, 1 changed, 2 destroyed.\n")
    assert progress.result_line("prod", 41.23) == \
        "prod: apply complete in 41.2 s: 4 added, 1 changed, 2 destroyed"


def test_without_a_plan_the_progress_counts_without_a_total() -> None:
    progress = view.ApplyProgress(None)
    progress.feed("terraform_data.a: Modifying... [id=1]")
    progress.feed("terraform_data.a: Modifications complete after 0s [id=1]")
    assert progress.text() == "1 done"


def test_error_block_is_kept_whole() -> None:
    lines = ["terraform_data.a: Creating...", "", "Error: Reference to undeclared input variable", "",
             '  on main.tf.json line 1, in output.x:', "", "An input variable with the name \"nope\" has not been "
             "declared.", "", ""]
    assert view.error_block(lines) == lines[2:-2]
    assert view.error_block(["just", "some", "output"]) == ["just", "some", "output"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[_Clock]:
    yield _Clock()


def test_plain_status_prints_on_change_or_every_interval_with_a_timestamp(clock: _Clock) -> None:
    out = io.StringIO()
    with Status(out, "waiting for i-1 Online", clock=clock, wall=lambda: 0.0, plain_every=15) as status:
        status.update("ConnectionLost")
        clock.now += 5
        status.update("ConnectionLost")
        clock.now += 11
        status.update("ConnectionLost")
        status.update("Online")
        status.done("i-1 Online (16 s)")
    lines = out.getvalue().splitlines()
    stamp = r"\d\d:\d\d:\d\d "
    assert len(lines) == 4, lines
    assert re.fullmatch(stamp + r"waiting for i-1 Online: ConnectionLost \(0 s\)", lines[0])
    assert re.fullmatch(stamp + r"waiting for i-1 Online: ConnectionLost \(16 s\)", lines[1]), "every 15 s"
    assert re.fullmatch(stamp + r"waiting for i-1 Online: Online \(16 s\)", lines[2])
    assert lines[3] == "i-1 Online (16 s)"
    assert "\x1b" not in out.getvalue()


def test_quiet_plain_status_says_nothing_unless_slow(clock: _Clock) -> None:
    out = io.StringIO()
    with Status(out, "terraform init", clock=clock, quiet_plain=True, plain_every=15) as status:
        status.update("a")
        status.update("b")
        assert out.getvalue() == ""
        clock.now += 20
        status.update("c")
    assert out.getvalue().endswith("terraform init: c (20 s)\n")


def test_an_auto_approved_apply_reads_its_plan_from_terraforms_output() -> None:
    progress = view.ApplyProgress(None, command="targeted apply")
    lines = [
        "Terraform used the selected providers to generate the following execution plan.",
        "  + create", "",
        "Terraform will perform the following actions:", "",
        '  # aws_subnet.Network_Private_0_A1["a"] will be created',
        "  + resource \"aws_subnet\" \"Network_Private_0_A1\" {",
        "  # module.edge.aws_instance.relay must be replaced",
        "  # aws_ssm_document.prefs (imported from \"SSM-SessionManagerRunShell\") will be imported",
        "  # aws_db_instance.old will be destroyed",
        "Plan: 2 to add, 0 to change, 2 to destroy.",
    ]
    changed = [progress.feed(ln) for ln in lines]
    assert changed[-1] and not any(changed[:-1])
    assert progress.plan is not None
    assert [(c.kind, c.action) for c in progress.plan.changes] == [
        ("aws_subnet", "create"), ("aws_instance", "replace"), ("aws_ssm_document", "import"),
        ("aws_db_instance", "destroy")]
    assert progress.text() == "0/3 done"
    # A resource line later in the apply is progress, not plan.
    progress.feed("  # aws_vpc.late will be created")
    assert len(progress.plan.changes) == 4


def test_the_lock_file_warning_is_explained_once_per_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path / "state"))
    out = io.StringIO()
    tf = Terraform(load_env("sandbox"), tmp_path, out=out)
    tf.home.mkdir(parents=True)
    warning = ["Warning: Incomplete lock file information for providers", "", "Due to your customized provider"]
    tf._explain_lock_warning(["Terraform has been successfully initialized!"])
    assert out.getvalue() == ""
    tf._explain_lock_warning(warning)
    tf._explain_lock_warning(warning)
    assert out.getvalue().count("Incomplete lock file information") == 1
    assert "README: Provider lock file" in out.getvalue()


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_on_a_terminal_the_live_line_gives_way_to_the_result(no_color: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", encoding="utf-8") as tty, Status(tty, "waiting for i-1 Online") as status:
            assert status.live_view, "a terminal gets the live line"
            status.update("ConnectionLost")
            status.done("i-1 Online: Online (3 s)", style="bold green")
        screen = _read_all(master)
    finally:
        os.close(master)
    assert "waiting for i-1 Online: ConnectionLost" in screen, "the live line was drawn"
    assert "i-1 Online: Online (3 s)" in screen
    colours = re.findall(r"\x1b\[[0-9;]*m", screen)
    assert ("\x1b[1;32m" in colours) != no_color, colours
    if no_color:
        assert not any(re.search(r"\b3[0-7]\b|38;", c) for c in colours), f"NO_COLOR: no colours ({colours})"
