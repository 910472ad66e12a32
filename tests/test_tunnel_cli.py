"""`invoke tunnel` error cases, through the real CLI: one line naming the fix, exit code 1, nothing left over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.ssm_support import relay_image
from tests.test_discovery import ExpiredAws
from tests.tunnel_fixtures import TunnelWorld, run_cli

pytest_plugins = ["tests.tunnel_fixtures"]


def invoke(*args: str, state_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full = dict(os.environ, BASTIONLESS_STATE_DIR=str(state_dir))
    full.pop("BASTIONLESS_SESSION_MANAGER_PLUGIN", None)
    full.update(env)
    for key in [k for k, v in full.items() if v == ""]:
        del full[key]  # "" means: not set at all
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, env=full)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines, "no error output"
    return lines[-1]


@pytest.mark.usefixtures("real_io")
def test_unknown_env(tmp_path: Path) -> None:
    proc = invoke("tunnel", "--env", "nope", state_dir=tmp_path)
    assert proc.returncode == 1
    assert error_line(proc).startswith("error: unknown environment 'nope': no file envs/nope.toml")


@pytest.mark.usefixtures("real_io")
def test_plugin_missing_with_transport_plugin(tmp_path: Path) -> None:
    proc = invoke("tunnel", "--env", "sandbox", "--transport", "plugin", state_dir=tmp_path,
                  PATH=str(tmp_path))
    assert proc.returncode == 1
    assert error_line(proc) == (
        "error: session-manager-plugin is not installed (not on PATH); next: install it "
        "(https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin"
        ".html), or use --transport native")


@pytest.mark.usefixtures("real_io")
def test_busy_local_port(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # --raw: the shipped sandbox lists people; this is about the plain tunnel's port check.
        proc = invoke("tunnel", "--env", "sandbox", "--raw", "--local-port", str(port), "--transport", "native",
                      state_dir=tmp_path)
    assert proc.returncode == 1
    assert error_line(proc) == (f"error: local port {port} is already in use; next: pass --local-port 0 for a free "
                                f"port, or --local-port N for another one")
    assert not list((tmp_path / "tunnels").glob("*.json"))


@pytest.mark.usefixtures("real_io")
def test_no_credentials(tmp_path: Path) -> None:
    proc = invoke("tunnel", "--env", "staging", "--local-port", "0", "--transport", "native", state_dir=tmp_path,
                  AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_SESSION_TOKEN="", AWS_PROFILE="",
                  AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                  AWS_EC2_METADATA_DISABLED="true")
    assert proc.returncode == 1
    assert error_line(proc).startswith("error: no AWS credentials found; next: aws sso login")


@pytest.fixture
def expired_state(tmp_path: Path, real_io: None) -> Iterator[Path]:
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), ExpiredAws)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "endpoints.json").write_text(json.dumps({"default": url, "ssm": url, "ecs": url}))
    try:
        yield tmp_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("real_io")
def test_missing_profile(tmp_path: Path) -> None:
    proc = invoke("tunnel", "--env", "staging", "--local-port", "0", "--transport", "native", state_dir=tmp_path,
                  AWS_PROFILE="no-such-profile", AWS_CONFIG_FILE=str(tmp_path / "none"),
                  AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    assert proc.returncode == 1
    assert error_line(proc) == ("error: AWS profile 'no-such-profile' does not exist; next: aws configure "
                                "list-profiles, then export AWS_PROFILE=<one of them>")


def test_expired_credentials(expired_state: Path) -> None:
    proc = invoke("tunnel", "--env", "sandbox", "--raw", "--local-port", "0", "--transport", "native",
                  state_dir=expired_state)
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("error: AWS rejected the credentials for ")
    assert "RequestExpired: they are invalid or expired" in line or "ExpiredTokenException" in line


@pytest.mark.slow
def test_relay_stopped(tunnel_world: TunnelWorld) -> None:
    tunnel_world.add_env("sandbox")
    iid = tunnel_world.relays["sandbox"]
    tunnel_world.set_relay("sandbox", running=False)
    try:
        proc = run_cli(tunnel_world, "tunnel", "--env", "sandbox", "--local-port", "0", "--transport", "native")
    finally:
        tunnel_world.set_relay("sandbox", running=True)
    assert proc.returncode == 1
    assert error_line(proc) == (f"error: relay {iid} is stopped; next: aws ec2 start-instances --instance-ids {iid} "
                                f"--region us-east-1, wait a minute, retry")
    assert tunnel_world.active_sessions() == []


@pytest.mark.slow
def test_relay_offline_in_ssm(tunnel_world: TunnelWorld) -> None:
    # A running instance Session Manager has never heard of: its agent is not connected.
    tunnel_world.add_env("sandbox")
    ec2 = tunnel_world.client("ec2")
    image = relay_image(ec2)
    plain = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t4g.nano")["Instances"][0]
    proc = run_cli(tunnel_world, "tunnel", "--env", "sandbox", "--local-port", "0", "--transport", "native",
                   "--instance", plain["InstanceId"])
    assert proc.returncode == 1
    assert error_line(proc).startswith(
        f"error: relay {plain['InstanceId']} is running but not registered with Session Manager "
        f"(its SSM agent never connected); next: invoke doctor --env sandbox")


@pytest.mark.slow
def test_database_not_available(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sandbox")
    tunnel_world.set_db(cfg, running=False)
    try:
        proc = run_cli(tunnel_world, "tunnel", "--env", "sandbox", "--local-port", "0", "--transport", "native")
    finally:
        tunnel_world.set_db(cfg, running=True)
    assert proc.returncode == 1
    assert error_line(proc).startswith(
        "error: database bastionless-sandbox is not available (status stopped); next: aws rds start-db-instance "
        "--db-instance-identifier bastionless-sandbox")
    assert tunnel_world.active_sessions() == []


@pytest.mark.slow
def test_tunnels_and_close_with_nothing_running(tunnel_world: TunnelWorld) -> None:
    listed = run_cli(tunnel_world, "tunnels")
    assert listed.returncode == 0 and "no tunnels running" in listed.stdout
    closed = run_cli(tunnel_world, "tunnel-close", "--env", "sandbox")
    assert closed.returncode == 1
    assert error_line(closed) == "error: no tunnel to sandbox is running on this machine; next: invoke tunnels"
    both = run_cli(tunnel_world, "tunnel-close")
    assert both.returncode == 1 and "give either --env NAME or --all" in error_line(both)
