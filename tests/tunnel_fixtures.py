"""A small sandbox for the tunnel tests: moto server, the local Session Manager endpoint, a real
PostgreSQL, and environments whose relay and database are created in moto with boto3.

Load with `pytest_plugins = ["tests.tunnel_fixtures"]`. The state dir (endpoints.json,
relay_hosts.json, sessions.json, tunnels/) is this module's own, exported as BASTIONLESS_STATE_DIR
while the fixtures live, so subprocesses (the CLI, background tunnels) see the same sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from ops.config import ENVS_DIR, EnvConfig, load_env
from ops.facts import ENVS_DIR_ENV, relay_tags
from ops.iam_policies import port_document_content, port_document_name
from tests.conftest import PROJECT_ROOT, plain_sandbox_toml
from tests.pg_support import start_cluster
from tests.ssm_support import EndpointThread, moto_process, relay_image, reset_moto, tag_list


def aws_client(service: str, url: str, region: str) -> Any:
    return boto3.client(service, region_name=region, endpoint_url=url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@dataclass
class TunnelWorld:
    moto_url: str
    endpoint: EndpointThread
    state_dir: Path
    envs_dir: Path
    pg_port: int = 0
    relays: dict[str, str] = field(default_factory=dict)

    def client(self, service: str, region: str = "us-east-1") -> Any:
        return aws_client(service, self.moto_url, region)

    def add_env(self, name: str, *, region: str = "us-east-1") -> EnvConfig:
        """An env file (plain_sandbox_toml()) plus its relay and RDS instance in moto."""
        path = self.envs_dir / f"{name}.toml"
        if not path.exists():
            path.write_text(plain_sandbox_toml().replace('region = "us-east-1"', f'region = "{region}"'))
        cfg = load_env(name, self.envs_dir)
        if name in self.relays:
            return cfg
        ec2 = self.client("ec2", region)
        vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.1.0/24")["Subnet"]["SubnetId"]
        image = relay_image(ec2)
        self.relays[name] = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType="t4g.nano", SubnetId=subnet,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(relay_tags(stack_name=cfg.stack_name,
                                                                                        env=name))}],
        )["Instances"][0]["InstanceId"]
        db = self.client("rds", region).create_db_instance(
            DBInstanceIdentifier=cfg.stack_name, Engine="postgres", DBInstanceClass="db.t4g.small",
            AllocatedStorage=20, DBName=cfg.database.name, MasterUsername=cfg.database.username,
            ManageMasterUserPassword=True, Port=5432)["DBInstance"]
        if self.pg_port:
            self.map_host(db["Endpoint"]["Address"], int(db["Endpoint"]["Port"]), self.pg_port)
        # What the stack creates (stacks/access.py): the env's port document, fixed to its database.
        self.client("ssm", region).create_document(
            Name=port_document_name(cfg.stack_name), DocumentType="Session", DocumentFormat="JSON",
            Content=json.dumps(port_document_content(host=db["Endpoint"]["Address"],
                                                     port=str(db["Endpoint"]["Port"]))))
        return cfg

    def map_host(self, host: str, port: int, pg_port: int) -> None:
        path = self.state_dir / "relay_hosts.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[f"{host}:{port}"] = f"127.0.0.1:{pg_port}"
        path.write_text(json.dumps(data))

    def set_relay(self, name: str, *, running: bool, region: str = "us-east-1") -> None:
        ec2 = self.client("ec2", region)
        iid = self.relays[name]
        if running:
            ec2.start_instances(InstanceIds=[iid])
        else:
            ec2.stop_instances(InstanceIds=[iid])

    def set_db(self, cfg: EnvConfig, *, running: bool) -> None:
        rds = self.client("rds", cfg.region)
        if running:
            rds.start_db_instance(DBInstanceIdentifier=cfg.stack_name)
        else:
            rds.stop_db_instance(DBInstanceIdentifier=cfg.stack_name)

    def active_sessions(self, target: str = "") -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Filters": [{"key": "Target", "value": target}]} if target else {}
        sessions: list[dict[str, Any]] = aws_client("ssm", self.endpoint.url, "us-east-1").describe_sessions(
            State="Active", **kwargs)["Sessions"]
        return sessions

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, BASTIONLESS_STATE_DIR=str(self.state_dir), PYTHONUNBUFFERED="1")
        env[ENVS_DIR_ENV] = str(self.envs_dir)
        env.pop("BASTIONLESS_SESSION_MANAGER_PLUGIN", None)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def tunnel_postgres() -> Iterator[int]:
    """Trust auth: the tunnel tests are about bytes through the channel, not about logins."""
    cluster = start_cluster("tunnel-pg-", superuser="app_admin", auth=["-A", "trust"])
    try:
        with psycopg.connect(host="127.0.0.1", port=cluster.port, user="app_admin", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        yield cluster.port
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def moto_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server process per test session (per xdist worker); each module's world empties it first
    (moto's reset API), so modules never see each other's resources. Starting moto costs ~4 s of CPU."""
    with moto_process(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def _world(tmp: Path, pg_port: int, moto_url: str) -> Iterator[TunnelWorld]:
    state = tmp / "state"
    envs = tmp / "envs"
    state.mkdir()
    envs.mkdir()
    # CLI children read the world's env files (BASTIONLESS_ENVS_DIR): the shipped ones, with the plain sandbox.
    for shipped in ENVS_DIR.glob("*.toml"):
        text = plain_sandbox_toml() if shipped.name == "sandbox.toml" else shipped.read_text()
        (envs / shipped.name).write_text(text)
    reset_moto(moto_url)
    endpoint = EndpointThread(moto_url=moto_url, state_dir=state).start()
    (state / "endpoints.json").write_text(json.dumps({"default": moto_url, "ssm": endpoint.url,
                                                      "ecs": endpoint.url}))
    world = TunnelWorld(moto_url=moto_url, endpoint=endpoint, state_dir=state, envs_dir=envs, pg_port=pg_port)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BASTIONLESS_STATE_DIR", str(state))
            # In-process load_env("sandbox") reads the world's env files too, like its CLI children.
            mp.setenv(ENVS_DIR_ENV, str(envs))
            try:
                yield world
            finally:
                from ops import tunnels_state

                tunnels_state.close_all(timeout=10)
    finally:
        endpoint.stop()


@pytest.fixture(scope="module")
def tunnel_world(tmp_path_factory: pytest.TempPathFactory, moto_server_process: str) -> Iterator[TunnelWorld]:
    """moto + endpoint, no PostgreSQL (discovery and error tests)."""
    yield from _world(tmp_path_factory.mktemp("tunnel-world"), 0, moto_server_process)


@pytest.fixture(scope="module")
def pg_world(tmp_path_factory: pytest.TempPathFactory, tunnel_postgres: int,
             moto_server_process: str) -> Iterator[TunnelWorld]:
    """moto + endpoint + a real PostgreSQL behind the emulated relay."""
    yield from _world(tmp_path_factory.mktemp("tunnel-pg-world"), tunnel_postgres, moto_server_process)


def run_cli(world: TunnelWorld, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=world.subprocess_env(**env))


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
