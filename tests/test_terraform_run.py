"""ops.terraform against the real terraform binary, offline.

The configurations here use only terraform's built-in `terraform_data` resource, so they need no
provider download: they exercise our runner (exit codes, outputs, init skipping, Ctrl-C) with the
real terraform and its real local-backend lock, not a stand-in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.config import load_env
from ops.errors import CommandFailedError
from ops.terraform import Terraform
from tests.conftest import PROJECT_ROOT
from tests.proc_support import proc_stat, processes

pytestmark = pytest.mark.usefixtures("terraform_bin")


def _write(workdir: Path, config: dict[str, object]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cdk.tf.json").write_text(json.dumps(config, indent=2))
    return workdir


def _config(*, outputs: dict[str, object] | None = None, data: object = "v1",
            provisioner: str | None = None) -> dict[str, object]:
    resource: dict[str, object] = {"input": data}
    if provisioner:
        resource["provisioner"] = [{"local-exec": {"command": provisioner}}]
    config: dict[str, object] = {
        "terraform": {"backend": {"local": {}}},
        "resource": {"terraform_data": {"thing": resource}},
    }
    if outputs:
        config["output"] = {k: {"value": v} for k, v in outputs.items()}
    return config


@pytest.mark.slow
def test_plan_apply_outputs_and_detailed_exit_codes(tmp_path: Path, state_dir: Path) -> None:
    cfg = load_env("sandbox")
    workdir = _write(tmp_path / "stack", _config(outputs={"answer": 42, "names": ["a", "b"]}))
    tf = Terraform(cfg, workdir)

    assert tf.plan(detailed_exitcode=True) == 2, "a new resource is a change: terraform's exit code 2"
    tf.apply(auto_approve=True)
    assert tf.local_state_path.is_file(), "the local backend state lives in the state dir, not the tree"
    assert tf.local_state_path.parent == state_dir / "terraform"
    assert tf.outputs() == {"answer": 42, "names": ["a", "b"]}
    # Both read from the state file (the local backend): what `terraform output -json` and `state pull` print.
    printed = json.loads(tf._capture(["output", "-json", "-no-color"], env=tf._env()).stdout)
    assert tf.outputs() == {name: item["value"] for name, item in printed.items()}
    # Read from the file (tests/test_deploy_confirm.py): the document `terraform state pull` prints.
    assert tf.state() == json.loads(tf._capture(["state", "pull"], env=tf._env()).stdout)
    assert [r["type"] for r in tf.state()["resources"]] == ["terraform_data"]
    assert tf.plan(detailed_exitcode=True) == 0, "nothing changed: exit code 0"
    assert tf.plan() == 0

    tf.destroy(auto_approve=True)
    assert tf.outputs() == {}


@pytest.mark.slow
def test_failing_command_propagates_terraform_exit_code(tmp_path: Path, state_dir: Path) -> None:
    cfg = load_env("sandbox")
    broken = _config(outputs={"x": "${var.not_declared}"})
    tf = Terraform(cfg, _write(tmp_path / "stack", broken))
    with pytest.raises(CommandFailedError) as exc:
        tf.validate()
    assert exc.value.returncode == 1
    assert "terraform validate failed for sandbox" in exc.value.message


def test_apply_and_destroy_refuse_to_prompt(tmp_path: Path, state_dir: Path) -> None:
    tf = Terraform(load_env("sandbox"), _write(tmp_path / "stack", _config()))
    with pytest.raises(ValueError, match="auto_approve"):
        tf.apply()
    with pytest.raises(ValueError, match="auto_approve"):
        tf.destroy()


@pytest.mark.slow
def test_init_is_skipped_until_its_inputs_change(tmp_path: Path, state_dir: Path) -> None:
    cfg = load_env("sandbox")
    workdir = _write(tmp_path / "stack", _config())
    tf = Terraform(cfg, workdir)
    assert tf.init() is True
    assert tf.init() is False, "nothing changed: init must be skipped"
    # A re-synthesis rewrites cdk.tf.json; a resource change does not concern init.
    _write(workdir, _config(data="v2"))
    assert Terraform(cfg, workdir).init() is False
    assert (state_dir / "terraform" / "sandbox" / "data").is_dir(), "TF_DATA_DIR is per env under the state dir"
    assert not (workdir / ".terraform").exists(), "no .terraform folder in the synthesized output"
    # A change in the terraform block does.
    changed = _config(data="v2")
    changed["terraform"] = {"backend": {"local": {}}, "required_version": ">= 1.5"}
    _write(workdir, changed)
    assert Terraform(cfg, workdir).init() is True
    # A backend change is terraform's to judge (it asks for -migrate-state): init runs and says so.
    changed["terraform"] = {"backend": {"local": {"workspace_dir": "ws"}}}
    _write(workdir, changed)
    with pytest.raises(CommandFailedError, match="terraform init failed"):
        Terraform(cfg, workdir).init()
    _write(workdir, _config(data="v2"))
    # So does deleting the data dir.
    import shutil

    shutil.rmtree(state_dir / "terraform" / "sandbox" / "data")
    assert Terraform(cfg, workdir).init() is True


_CHILD = """
import sys
from pathlib import Path
from ops.config import load_env
from ops.errors import CommandFailedError
from ops.terraform import Terraform
tf = Terraform(load_env("sandbox"), Path(sys.argv[1]))
tf.init()
print("APPLYING", flush=True)
try:
    tf.apply(auto_approve=True)
except CommandFailedError as exc:
    print("FAILED", exc.returncode, exc.message, flush=True)
    sys.exit(exc.returncode)
print("APPLIED", flush=True)
"""


def _children(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.ppid == pid]


def _alive(pid: int) -> bool:
    found = proc_stat(pid)
    return found is not None and found.state != "Z"


@pytest.mark.slow
def test_ctrl_c_is_forwarded_and_terraform_releases_its_lock(tmp_path: Path, state_dir: Path) -> None:
    workdir = _write(tmp_path / "stack", _config(provisioner="sleep 120"))
    log = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(workdir)], stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=PROJECT_ROOT)
    try:
        lock = Terraform(load_env("sandbox"), workdir).local_lock_path
        deadline = time.monotonic() + 120
        terraform_pid = 0
        # Wait until the apply holds the state lock and its provisioner is running.
        while time.monotonic() < deadline:
            if child.poll() is not None:
                pytest.fail(f"the child exited early: {log.read_text()}")
            if "APPLYING" in log.read_text() and lock.is_file():
                terraform_pid = next(iter(_children(child.pid)), 0)
                # Terraform's own output goes to its log file; ours (and, after Ctrl-C, its) to the child's.
                tf_logs = "".join(p.read_text() for p in (state_dir / "terraform" / "sandbox" / "logs").glob("*.log"))
                if terraform_pid and any(_children(terraform_pid)) and "Provisioning with" in tf_logs:
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"terraform apply never took the lock: {log.read_text()}")
        # Terraform has its own process group: only our forwarding can deliver the interrupt.
        assert os.getpgid(terraform_pid) != os.getpgid(child.pid)

        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    output = log.read_text()
    assert code == 130, output
    assert "Interrupt received" in output, "terraform got the SIGINT and shut down gracefully"
    assert "FAILED 130 interrupted" in output
    assert not _alive(terraform_pid), "terraform is still running after our process returned"
    assert not lock.exists(), "terraform left its state lock behind"
