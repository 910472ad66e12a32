"""ecs-shell end to end: moto + the local Session Manager endpoint running a real local shell for the task.

The interactive test drives `invoke ecs-shell` in a real terminal (tmux) the way a person would:
type into the pane, read the pane.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import ecs_exec
from ops.ecs_exec import EcsExecError
from ops.errors import ToolMissingError
from ops.facts import SESSIONS_FILE
from tests.ecs_support import TASK_IDS, EcsWorld, sandbox_task

pytest_plugins = ["tests.ecs_fixtures"]


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


def run_captured(ecs_world: EcsWorld, command: str, **kwargs: str) -> tuple[int, str]:
    read_fd, write_fd = os.pipe()
    try:
        code = ecs_exec.run_command(ecs_world.cfg, command=command, stdout_fd=write_fd, **kwargs)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        return code, pipe.read().decode(errors="replace")


def session_count(ecs_world: EcsWorld) -> int:
    path = ecs_world.state_dir / SESSIONS_FILE
    if not path.exists():
        return 0
    data = json.loads(path.read_text())
    return len(data.get("sessions", data) if isinstance(data, dict) else data)


def test_command_output_and_exit_status(ecs_world: EcsWorld) -> None:
    code, out = run_captured(ecs_world, "sh -c 'echo hi-from-task; exit 3'", reason="INC-1 check")
    assert code == 3
    assert "hi-from-task" in out


def test_several_tasks_without_tty_need_task_then_task_works(ecs_world: EcsWorld) -> None:
    second = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                          task_def=ecs_world.ids["task_def"],
                          tid=TASK_IDS[1])
    ecs_world.write_tasks([*ecs_world.tasks, second])
    try:
        with pytest.raises(EcsExecError) as info:
            run_captured(ecs_world, "true")
        assert TASK_IDS[0] in info.value.message and TASK_IDS[1] in info.value.message
        assert "--task" in info.value.next_step
        code, out = run_captured(ecs_world, "sh -c 'echo picked'", task=TASK_IDS[1])
        assert (code, out.strip()) == (0, "picked")
    finally:
        ecs_world.write_tasks()


def test_preflight_failure_stops_before_execute_command(ecs_world: EcsWorld) -> None:
    bad = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                       task_def=ecs_world.ids["task_def"],
                       tid=TASK_IDS[1], platformVersion="1.3.0")
    bad["containers"][0]["managedAgents"][0]["lastStatus"] = "STOPPED"
    ecs_world.write_tasks([bad])
    before = session_count(ecs_world)
    try:
        with pytest.raises(EcsExecError) as info:
            run_captured(ecs_world, "true")
    finally:
        ecs_world.write_tasks()
    lines = info.value.message.splitlines()[1:]
    assert len(lines) == 2
    assert "ExecuteCommandAgent of container app is STOPPED" in lines[0]
    assert "platform 1.3.0" in lines[1]
    assert session_count(ecs_world) == before


def test_cli_command_exit_status(ecs_world: EcsWorld) -> None:
    env = {**os.environ, "BASTIONLESS_STATE_DIR": str(ecs_world.state_dir)}
    proc = subprocess.run([INVOKE, "ecs-shell", "--env", "sandbox", "--command", "sh -c 'echo via-cli; exit 5'"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.returncode == 5, proc.stderr
    assert "via-cli" in proc.stdout
    assert "session " in proc.stderr


def test_cli_ecs_shell_through_aws_plugin_with_exec_kms(ecs_world: EcsWorld) -> None:
    """`invoke ecs-shell --transport plugin` with AWS's own plugin on a cluster with exec KMS: the plugin
    fetches the data key from KMS (kms.<region>.amazonaws.com: the sandbox proxies it to moto) and runs
    the command. The plugin needs a terminal, as under the AWS CLI, so the CLI runs on a pty here."""
    import select

    from tests.ssm_support import real_plugin

    env = {**os.environ, "BASTIONLESS_STATE_DIR": str(ecs_world.state_dir),
           "BASTIONLESS_SESSION_MANAGER_PLUGIN": real_plugin()}
    master, slave = os.openpty()
    proc = subprocess.Popen([INVOKE, "ecs-shell", "--env", "sandbox", "--transport", "plugin", "--command",
                             "sh -c 'echo via-plugin-$((6*7))'"], cwd=ROOT, env=env, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if select.select([master], [], [], 0.1)[0]:
                    out += os.read(master, 65536)
                elif proc.poll() is not None:
                    break
            except OSError:
                break
        assert proc.wait(timeout=10) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"via-plugin-42" in out, out
    assert b"KMSEncryption failed" not in out


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=20).stdout


def _wait_for(session: str, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    pane = ""
    while time.monotonic() < deadline:
        pane = _tmux("capture-pane", "-p", "-t", session)
        if needle in pane:
            return pane
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the pane:\n{pane}")


@pytest.mark.usefixtures("tmux_bin")
def test_interactive_shell_under_tmux(ecs_world: EcsWorld, tmp_path: Path) -> None:
    session = f"ecs-test-{os.getpid()}"
    # A second task so the TTY chooser is exercised too; then the shell; then the outer shell prints
    # the exit status and whether the terminal came back in cooked mode (icanon, echo).
    second = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                          task_def=ecs_world.ids["task_def"],
                          tid=TASK_IDS[1])
    ecs_world.write_tasks([*ecs_world.tasks, second])
    script = tmp_path / "run.sh"
    script.write_text(
        f"cd {shlex.quote(str(ROOT))}\n"
        f"export BASTIONLESS_STATE_DIR={shlex.quote(str(ecs_world.state_dir))}\n"
        f"{shlex.quote(INVOKE)} ecs-shell --env sandbox --command /bin/sh --reason tmux-test\n"
        "echo \"rc=$?\"\n"
        "stty -a | tr ' ' '\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '; echo\n"
        "echo modes-shown\n"
        "sleep 60\n")
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", f"sh {shlex.quote(str(script))}")
    try:
        pane = _wait_for(session, "number [1-2]:")
        assert TASK_IDS[0] in pane and TASK_IDS[1] in pane
        _tmux("send-keys", "-t", session, "2", "Enter")
        _wait_for(session, "session ")
        time.sleep(1.0)
        _tmux("send-keys", "-t", session, "echo hi-$((40+2)) && tty", "Enter")
        pane = _wait_for(session, "hi-42")
        # The remote pty got our window size, and follows a resize (SIGWINCH -> size message).
        _tmux("send-keys", "-t", session, "echo size=$(stty size)", "Enter")
        _wait_for(session, "size=40 120")
        _tmux("resize-window", "-t", session, "-x", "100", "-y", "30")
        time.sleep(0.5)
        _tmux("send-keys", "-t", session, "echo size2=$(stty size)", "Enter")
        _wait_for(session, "size2=30 100")
        # Ctrl-C interrupts the remote command, not ecs-shell: the remote shell is still there afterwards.
        _tmux("send-keys", "-t", session, "sleep 30; echo not-interrupted", "Enter")
        time.sleep(1.0)
        _tmux("send-keys", "-t", session, "C-c")
        _tmux("send-keys", "-t", session, "echo still-$((6*7))", "Enter")
        pane = _wait_for(session, "still-42")
        assert "not-interrupted" not in pane.replace("echo not-interrupted", "")
        _tmux("send-keys", "-t", session, "exit 3", "Enter")
        # (The modes line follows rc=3 a moment later: wait for the line after it.)
        pane = _wait_for(session, "modes-shown")
        after = pane.split("rc=3", 1)[1].split("modes-shown", 1)[0]
        assert "icanon" in after and "-icanon" not in after
        assert " echo" in f" {after}" and "-echo " not in after
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False, timeout=20)
        ecs_world.write_tasks()


def test_plugin_transport_gets_the_aws_cli_argv_and_ctrl_c_is_left_to_it(ecs_world: EcsWorld, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Test double for session-manager-plugin (not installed here): answers --version like a current
    # plugin; otherwise records its argv and environment, sends Ctrl-C to its parent as a terminal
    # would to the whole foreground group, and exits 7.
    fake = tmp_path / "session-manager-plugin"
    record = tmp_path / "argv.json"
    fake.write_text(f"#!{sys.executable}\n"
                    "import json, os, signal, sys\n"
                    "if sys.argv[1:] == ['--version']:\n"
                    "    print('1.2.764.0')\n"
                    "    sys.exit(0)\n"
                    f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv, "
                    "'response': os.environ.get('AWS_SSM_START_SESSION_RESPONSE')}))\n"
                    "os.kill(os.getppid(), signal.SIGINT)\n"
                    "sys.exit(7)\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("BASTIONLESS_SESSION_MANAGER_PLUGIN", raising=False)
    code = ecs_exec.ecs_shell(ecs_world.cfg, command="/bin/sh", transport="plugin", interactive=False, chooser=None,
                              stdin_fd=None)
    assert code == 7
    seen = json.loads(record.read_text())
    argv, response = seen["argv"], json.loads(seen["response"])
    assert set(response) == {"SessionId", "StreamUrl", "TokenValue"}
    # The token travels in the environment only, as the AWS CLI does for current plugins.
    assert argv[1] == "AWS_SSM_START_SESSION_RESPONSE"
    assert not any(response["TokenValue"] in a for a in argv)
    assert argv[2:5] == ["us-east-1", "StartSession", ""]
    tid = TASK_IDS[0]
    assert json.loads(argv[5]) == {"Target": f"ecs:{ecs_world.ids['cluster']}_{tid}_{tid}-app"}
    assert argv[6] == ecs_world.endpoint.url


def test_a_plugin_that_wants_the_token_in_argv_is_refused(ecs_world: EcsWorld, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "session-manager-plugin"  # test double: a plugin as old as 1.2.497.0
    ran = tmp_path / "ran"
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "if sys.argv[1:] == ['--version']:\n    print('1.2.497.0')\n    sys.exit(0)\n"
                    f"open({str(ran)!r}, 'w').write('started')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("BASTIONLESS_SESSION_MANAGER_PLUGIN", raising=False)
    sessions = ecs_world.state_dir / SESSIONS_FILE

    def opened() -> int:
        return len(json.loads(sessions.read_text())["sessions"]) if sessions.exists() else 0

    before = opened()
    with pytest.raises(ToolMissingError, match="too old"):
        ecs_exec.ecs_shell(ecs_world.cfg, command="/bin/sh", transport="plugin", interactive=False, chooser=None,
                           stdin_fd=None)
    assert not ran.exists()
    assert opened() == before  # refused before ExecuteCommand: no session left dangling


def test_execute_command_rejection_names_doctor(ecs_world: EcsWorld) -> None:
    from ops import aws

    gone = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                        task_def=ecs_world.ids["task_def"],
                        tid="ffffffffffffffffffffffffffffffff")
    target = ecs_exec.Target(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"], task=gone,
                             container="app")
    with pytest.raises(EcsExecError) as info:
        ecs_exec.execute_command(aws.client(ecs_world.cfg, "ecs"), target, command="true", env="sandbox")
    assert info.value.message.startswith("ExecuteCommand failed: InvalidParameterException")
    assert info.value.next_step == "invoke doctor --env sandbox"
