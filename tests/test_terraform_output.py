"""What a terraform run shows, against the real terraform binary (built-in `terraform_data` only, so
no provider download): the plan table, the one-line result, the log file with terraform's whole
output, terraform's error block on failure, `verbose`, and the live view on a real terminal (tmux)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ops import terraform_view as view
from ops.config import load_env
from ops.errors import CommandFailedError
from ops.terraform import Terraform
from tests.conftest import PROJECT_ROOT
from tests.tiers import needs_tool

pytestmark = [
    pytest.mark.slow,
    needs_tool("terraform", "terraform is not installed (see README)"),
]


def _chain(workdir: Path, *, names: tuple[str, ...] = ("a", "b", "c"), sleep: float = 0, version: str = "v1") -> Path:
    """terraform_data resources created one after another (each depends on the previous one)."""
    resources: dict[str, object] = {}
    for i, name in enumerate(names):
        body: dict[str, object] = {"input": f"{name}-{version}"}
        if sleep:
            body["provisioner"] = [{"local-exec": {"command": f"sleep {sleep}"}}]
        if i:
            body["depends_on"] = [f"terraform_data.{names[i - 1]}"]
        resources[name] = body
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"terraform": {"backend": {"local": {}}}, "resource": {"terraform_data": resources}}
    (workdir / "cdk.tf.json").write_text(json.dumps(config, indent=2))
    return workdir


def test_plan_table_apply_result_and_the_log_file(tmp_path: Path, state_dir: Path) -> None:
    out = io.StringIO()
    tf = Terraform(load_env("sandbox"), _chain(tmp_path / "stack"), out=out)
    plan = tf.home / "plans" / "t.tfplan"
    plan.parent.mkdir(parents=True, exist_ok=True)
    assert tf.plan(detailed_exitcode=True, out=plan) == 2
    tf.apply(plan_file=plan)
    screen = out.getvalue().splitlines()
    assert tf.log.path is not None and screen[0] == f"terraform's output: {tf.log.path}", "the log path comes first"
    assert "plan for sandbox: 3 to create, 0 to update, 0 to replace, 0 to destroy" in screen
    assert any(re.fullmatch(r"\s+create\s+terraform_data x3", ln) for ln in screen), screen
    assert re.fullmatch(r"sandbox: apply complete in \d+\.\d s: 3 added, 0 changed, 0 destroyed", screen[-1])
    assert len(screen) <= 5, screen
    assert not any("Creating..." in ln or "Terraform will perform" in ln for ln in screen), "raw output stays off"
    log = tf.log.path.read_text()
    for expected in ("$ terraform init", "$ terraform plan", "Terraform will perform the following actions",
                     "$ terraform apply", "terraform_data.c: Creation complete", "Apply complete! Resources: 3 added"):
        assert expected in log, f"{expected!r} missing from the log"
    assert tf.log.path.stat().st_mode & 0o777 == 0o600

    # A replacement and a deletion are named, not folded into a count.
    _chain(tmp_path / "stack", names=("a", "b"), version="v2")
    out.truncate(0)
    out.seek(0)
    tf = Terraform(load_env("sandbox"), tmp_path / "stack", out=out)
    tf.plan()
    text = out.getvalue()
    assert "plan for sandbox: 0 to create, 2 to update, 0 to replace, 1 to destroy" in text, text
    assert re.search(r"^\s+DESTROY\s+terraform_data\.c$", text, re.MULTILINE), text


def test_the_plan_summary_read_from_terraforms_text_is_what_show_json_says(tmp_path: Path, state_dir: Path) -> None:
    """The plan table comes from the plan's own output (no `show -json` run): the same changes, by the real
    terraform, for a create, an update, a requested replacement and a deletion."""
    stack = _chain(tmp_path / "stack")
    Terraform(load_env("sandbox"), stack, out=io.StringIO()).apply(auto_approve=True)
    _chain(stack, names=("a", "b", "d"), version="v2")
    tf = Terraform(load_env("sandbox"), stack, out=io.StringIO())
    plan = tf.home / "plans" / "mixed.tfplan"
    plan.parent.mkdir(parents=True, exist_ok=True)
    assert tf.plan(detailed_exitcode=True, out=plan, replace=["terraform_data.a"]) == 2
    assert tf.last_plan is not None
    from_show = view.summarize(tf.show_json(plan))
    assert {c.action for c in from_show.changes} == {"create", "update", "replace", "destroy"}
    assert sorted(tf.last_plan.changes, key=str) == sorted(from_show.changes, key=str)


def test_an_auto_approved_apply_shows_the_plan_it_read_from_terraform(tmp_path: Path, state_dir: Path) -> None:
    out = io.StringIO()
    Terraform(load_env("sandbox"), _chain(tmp_path / "stack"), out=out).apply(auto_approve=True, targets=[
        "terraform_data.b"])
    screen = out.getvalue().splitlines()
    assert "plan for sandbox: 2 to create, 0 to update, 0 to replace, 0 to destroy" in screen, screen
    assert re.fullmatch(r"sandbox: targeted apply complete in \d+\.\d s: 2 added, 0 changed, 0 destroyed",
                        screen[-1]), screen


def test_a_failure_shows_terraform_error_block_and_names_the_log(tmp_path: Path, state_dir: Path) -> None:
    workdir = _chain(tmp_path / "stack")
    config = json.loads((workdir / "cdk.tf.json").read_text())
    config["output"] = {"x": {"value": "${var.not_declared}"}}
    (workdir / "cdk.tf.json").write_text(json.dumps(config))
    out = io.StringIO()
    tf = Terraform(load_env("sandbox"), workdir, out=out)
    with pytest.raises(CommandFailedError) as exc:
        tf.validate()
    text = out.getvalue()
    assert "Error: Reference to undeclared input variable" in text
    assert "An input variable with the name \"not_declared\" has not been declared" in text, "the whole detail"
    assert str(tf.log.path) in exc.value.message


def test_verbose_streams_terraform_output(tmp_path: Path, state_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tf = Terraform(load_env("sandbox"), _chain(tmp_path / "stack"), verbose=True)
    tf.apply(auto_approve=True)
    captured = capfd.readouterr()
    assert "terraform_data.a: Creation complete" in captured.out + captured.err
    assert tf.log.path is None, "verbose: terraform's output goes to the screen, no log"


_DRIVER = """
import sys
from pathlib import Path
from ops.config import load_env
from ops.terraform import Terraform
tf = Terraform(load_env("sandbox"), Path(sys.argv[1]))
plan = Path(sys.argv[2])
tf.plan(out=plan)
tf.apply(plan_file=plan)
print("DRIVER DONE", flush=True)
"""


def _capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=False).stdout


@needs_tool("tmux", "tmux is not installed (./dev test installs it)")
def test_live_view_on_a_terminal_then_the_summary(tmp_path: Path, state_dir: Path) -> None:
    workdir = _chain(tmp_path / "stack", sleep=2)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    session = f"bl-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "LANG": "C.UTF-8", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    command = f"{sys.executable} {driver} {workdir} {tmp_path / 'p.tfplan'}; sleep 60"
    subprocess.run(["tmux", "-u", "new-session", "-d", "-s", session, "-x", "150", "-y", "40", command],
                   cwd=PROJECT_ROOT, env=env, check=True)
    live = re.compile(r"terraform apply sandbox: [0-2]/3 done; creating terraform_data\.[abc] \(\d+ s\)")
    seen_live = ""
    try:
        deadline = time.monotonic() + 120
        screen = ""
        while time.monotonic() < deadline:
            screen = _capture(session)
            if not seen_live and (found := live.search(screen)):
                seen_live = found.group(0)
            if "DRIVER DONE" in screen:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the driver did not finish:\n{screen}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
    assert seen_live, "the live line (done of total, the one in flight, elapsed) was never on screen"
    lines = [ln.rstrip() for ln in screen.splitlines() if ln.strip()]
    done = lines.index("DRIVER DONE")
    assert re.fullmatch(r"sandbox: apply complete in \d+\.\d s: 3 added, 0 changed, 0 destroyed", lines[done - 1])
    assert "plan for sandbox: 3 to create, 0 to update, 0 to replace, 0 to destroy" in lines
    assert not live.search(screen), "the live line is replaced by the result, not left behind"
