"""Helpers for the Session Manager tests: the endpoint in a thread, a moto relay, an echo server.

The endpoint runs on its own event loop in a thread (as it would in its own process); tests drive
the client with `asyncio.run`, so both sides talk over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from ops.config import PROJECT_ROOT
from ops.facts import PLUGIN_ENV, RELAY_HOSTS_FILE, SANDBOX_AGENT_VERSION, relay_tags
from ops.sandbox import moto as sandbox_moto
from ops.sandbox import procs
from ops.sandbox.agent import DEFAULT_PROFILE
from ops.sandbox.ssm_endpoint import serve

REGION = "eu-west-1"
DB_HOST = "bastionless-test.abc123.eu-west-1.rds.amazonaws.com"
DB_PORT = 5432


def plugin_path() -> str:
    """AWS's session-manager-plugin: BASTIONLESS_SESSION_MANAGER_PLUGIN, else PATH, else the build in
    ../shared/tools beside the checkout (where CI puts it); "" when none exists."""
    shared = Path(__file__).resolve().parents[2] / "shared/tools/session-manager-plugin/session-manager-plugin"
    return (os.environ.get(PLUGIN_ENV) or shutil.which("session-manager-plugin")
            or (str(shared) if shared.is_file() else ""))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EndpointThread:
    def __init__(self, *, moto_url: str, state_dir: Path, agent_version: str = SANDBOX_AGENT_VERSION,
                 profile: str = DEFAULT_PROFILE, time_scale: float = 1.0) -> None:
        """`profile`: the agent's pace; "faithful" (the default) unless a test says why it needs "fast"."""
        self.state_dir = state_dir
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[str] = self._loop.create_future()
        self._kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "moto_url": moto_url,
                                        "state_dir": state_dir, "agent_version": agent_version,
                                        "profile": profile, "time_scale": time_scale}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(serve(**self._kwargs, ready=self._ready, stop=self._stop))

    def start(self) -> EndpointThread:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(self._ready), 30),
                                                    self._loop).result(35)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()

    @property
    def ca_file(self) -> str:
        """The CA the endpoint's wss:// data channel is signed with (clients must be told to trust it)."""
        return str(self.state_dir / "tls" / "ca.pem")

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test endpoint
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def ssm(self) -> Any:
        return boto3.client("ssm", region_name=REGION, endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def ecs(self) -> Any:
        return boto3.client("ecs", region_name=REGION, endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing")


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """EC2's tag shape."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# The relay's image as its name reads (AL2023 on arm64). Asking for every image Amazon owns (~1,300 in moto)
# cost moto ~0.8 s of CPU to serialize and the test as much to parse, ~30 times a run.
RELAY_IMAGE_NAME = "al2023-ami-2023*-arm64"


def relay_image(ec2: Any) -> str:
    """An AMI id to launch a stand-in relay from: one AL2023 arm64 image of the emulator's."""
    images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": [RELAY_IMAGE_NAME]}])["Images"]
    assert images, f"the emulator has no Amazon image named {RELAY_IMAGE_NAME}"
    return str(images[0]["ImageId"])


def create_relay(moto_url: str, *, running: bool = True, region: str = REGION) -> str:
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=moto_url, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.1.0/24")["Subnet"]["SubnetId"]
    inst = ec2.run_instances(
        ImageId=relay_image(ec2), MinCount=1, MaxCount=1, InstanceType="t4g.nano", SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": tag_list(relay_tags(stack_name="bastionless-test", env="test"))}],
    )["Instances"][0]["InstanceId"]
    if not running:
        ec2.stop_instances(InstanceIds=[inst])
    return str(inst)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(1 << 16):
            sock.sendall(data)


def echo_once(port: int, blob: bytes) -> bytes:
    """One connection to 127.0.0.1:port: send `blob`, read back as many bytes (fewer if the far end closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(blob)
        got = b""
        while len(got) < len(blob):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


@dataclass
class EndpointBox:
    endpoint: EndpointThread
    relay: str
    moto_url: str

    def map_host(self, name: str, port: int, target: tuple[str, int]) -> None:
        path = self.endpoint.state_dir / RELAY_HOSTS_FILE
        data = procs.read_json(path) or {}
        data[f"{name}:{port}"] = f"{target[0]}:{target[1]}"
        procs.write_json(path, data)

    def start_port_session(self, *, host: str = DB_HOST, port: int = DB_PORT, reason: str = "test") -> dict[str, Any]:
        result: dict[str, Any] = self.endpoint.ssm().start_session(
            Target=self.relay, DocumentName="AWS-StartPortForwardingSessionToRemoteHost",
            Parameters={"host": [host], "portNumber": [str(port)], "localPortNumber": ["0"]}, Reason=reason)
        return result


@contextmanager
def moto_process(log: Path, *, managed_policies: bool = False, account_id: str = "") -> Iterator[str]:
    """moto in its own process: in-process moto servers share one global state, and other test modules
    build their own AWS accounts in it. `account_id`: answer as that account (default moto's own)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": str(managed_policies).lower()}
    env.pop("MOTO_ACCOUNT_ID", None)
    if account_id:
        env["MOTO_ACCOUNT_ID"] = account_id
    with log.open("wb") as out:
        # moto_server as the sandbox serves it (ops.sandbox.moto.serve), without the sandbox's IAM enforcement.
        proc = subprocess.Popen([sys.executable, "-m", "ops.sandbox.moto", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=PROJECT_ROOT)
        try:
            # The sandbox's own readiness check of its moto (ops/sandbox/moto.py).
            if not procs.wait_until(lambda: sandbox_moto.healthy(url), timeout=60, alive=lambda: proc.poll() is None):
                raise RuntimeError(f"moto_server did not start; see {log}")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def reset_moto(url: str) -> None:
    """Empty a moto server (moto's own reset API): every backend, every account and region."""
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - loopback
        pass


def real_plugin() -> str:
    """For tests of the real plugin: its path; in CI a missing plugin fails the test, elsewhere it skips."""

    found = plugin_path()
    if not found:
        message = ("no session-manager-plugin (set BASTIONLESS_SESSION_MANAGER_PLUGIN, put it on PATH, or "
                   "build it into ../shared/tools/session-manager-plugin)")
        from tests.tiers import missing_tool

        missing_tool(f"the real-plugin tests: {message}")
    return found


def run_plugin_shell(plugin: str, *, answer: dict[str, str], region: str, target: str, endpoint_url: str,
                     env: dict[str, str], timeout: float = 30) -> tuple[int, bytes]:
    """AWS's plugin on a pty for one shell session, as the AWS CLI starts it: (exit status, terminal output)."""
    import select
    import signal

    master, slave = os.openpty()
    proc = subprocess.Popen([plugin, json.dumps(answer), region, "StartSession", "", json.dumps({"Target": target}),
                             endpoint_url], env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"the plugin did not finish: {out!r}")
            try:
                if select.select([master], [], [], 0.1)[0]:
                    out += os.read(master, 65536)
                elif proc.poll() is not None:
                    break
            except OSError:  # EIO: the plugin closed the terminal
                break
        return proc.wait(timeout=10), out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
