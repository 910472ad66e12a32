"""Relay and database discovery through the AWS APIs (moto server + the local SSM endpoint)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops.config import load_env
from ops.discovery import (
    DatabaseNotAvailableError,
    RelayNotReadyError,
    database_override,
    find_database,
    find_relay,
)
from ops.errors import CredentialsError, OpsError
from tests.tunnel_fixtures import TunnelWorld

pytest_plugins = ["tests.tunnel_fixtures"]


@pytest.mark.slow
def test_find_relay_by_tags_running_and_online(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sandbox")
    relay = find_relay(cfg)
    assert relay.instance_id == tunnel_world.relays["sandbox"]
    assert (relay.state, relay.ping_status) == ("running", "Online")
    assert relay.agent_version.count(".") == 3


@pytest.mark.slow
def test_find_relay_ignores_other_envs_relays(tunnel_world: TunnelWorld) -> None:
    tunnel_world.add_env("sandbox")
    other = tunnel_world.add_env("other")
    assert find_relay(other).instance_id == tunnel_world.relays["other"] != tunnel_world.relays["sandbox"]


@pytest.mark.slow
def test_instance_override(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sandbox")
    assert find_relay(cfg, instance_id=tunnel_world.relays["sandbox"]).instance_id == tunnel_world.relays["sandbox"]
    with pytest.raises(RelayNotReadyError, match="no instance i-0123456789abcdef0") as exc:
        find_relay(cfg, instance_id="i-0123456789abcdef0")
    assert "--instance" in exc.value.next_step


@pytest.mark.slow
def test_no_relay_names_the_tags_and_deploy(tunnel_world: TunnelWorld) -> None:
    cfg = replace(tunnel_world.add_env("sandbox"), name="ghost")
    with pytest.raises(RelayNotReadyError) as exc:
        find_relay(cfg)
    assert "no relay found for ghost" in exc.value.message
    assert "bastionless:env=ghost" in exc.value.message
    assert exc.value.next_step.startswith("invoke deploy --env ghost")


@pytest.mark.slow
def test_stopped_relay_says_how_to_start_it(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("stopper")
    tunnel_world.set_relay("stopper", running=False)
    try:
        with pytest.raises(RelayNotReadyError) as exc:
            find_relay(cfg)
        iid = tunnel_world.relays["stopper"]
        assert exc.value.message == f"relay {iid} is stopped"
        assert f"aws ec2 start-instances --instance-ids {iid}" in exc.value.next_step
    finally:
        tunnel_world.set_relay("stopper", running=True)
    assert find_relay(cfg).ping_status == "Online"


@pytest.mark.slow
def test_find_database_reads_rds_including_the_secret(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("sandbox")
    db = find_database(cfg)
    assert db.identifier == "bastionless-sandbox"
    assert db.address.startswith("bastionless-sandbox.") and db.port == 5432
    assert (db.name, db.username, db.status) == ("app", "app_admin", "available")
    assert db.secret_arn.startswith("arn:aws:secretsmanager:us-east-1:")


@pytest.mark.slow
def test_missing_database(tunnel_world: TunnelWorld) -> None:
    cfg = replace(tunnel_world.add_env("sandbox"), name="nodb")
    with pytest.raises(DatabaseNotAvailableError) as exc:
        find_database(cfg)
    assert exc.value.message == "database bastionless-nodb not found in us-east-1"
    assert exc.value.next_step.startswith("invoke deploy --env nodb")


@pytest.mark.slow
def test_stopped_database_says_how_to_start_it(tunnel_world: TunnelWorld) -> None:
    cfg = tunnel_world.add_env("dbstop")
    tunnel_world.set_db(cfg, running=False)
    try:
        with pytest.raises(DatabaseNotAvailableError) as exc:
            find_database(cfg)
        assert exc.value.message == "database bastionless-dbstop is not available (status stopped)"
        assert "aws rds start-db-instance --db-instance-identifier bastionless-dbstop" in exc.value.next_step
    finally:
        tunnel_world.set_db(cfg, running=True)


def test_host_override() -> None:
    cfg = load_env("sandbox")
    db = database_override(cfg, "replica.example.internal:6432")
    assert (db.address, db.port, db.name, db.username) == ("replica.example.internal", 6432, "app", "app_admin")
    assert database_override(cfg, "replica.example.internal").port == 5432
    with pytest.raises(OpsError, match="HOST:PORT"):
        database_override(cfg, "replica:abc")


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A real-AWS env with no credentials anywhere: botocore refuses before sending anything.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CredentialsError) as exc:
        find_relay(load_env("staging"))
    assert exc.value.message == "no AWS credentials found"
    assert "aws sso login" in exc.value.next_step


class ExpiredAws(BaseHTTPRequestHandler):
    """Test double for AWS itself (the one thing we cannot run): answers every EC2 query-protocol and
    JSON-protocol call with the error AWS returns for expired temporary credentials."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("X-Amz-Target"):
            body = json.dumps({"__type": "ExpiredTokenException",
                               "message": "The security token included in the request is expired"}).encode()
            ctype = "application/x-amz-json-1.1"
        else:
            body = (b"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>RequestExpired</Code>"
                    b"<Message>Request has expired.</Message></Error></Errors><RequestID>x</RequestID></Response>")
            ctype = "text/xml"
        self.send_response(400)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def expired_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_io: None) -> Iterator[Path]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ExpiredAws)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "endpoints.json").write_text(json.dumps({"default": url, "ssm": url}))
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path))
    try:
        yield tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_expired_credentials(expired_aws: Path) -> None:
    cfg = load_env("sandbox")
    with pytest.raises(CredentialsError) as exc:
        find_relay(cfg)
    assert "AWS rejected the credentials for ec2:DescribeInstances (RequestExpired" in exc.value.message
    with pytest.raises(CredentialsError, match="ExpiredTokenException"):
        from ops import aws
        from ops.discovery import aws_call

        ssm = aws.client(cfg, "ssm")
        aws_call(cfg, "ssm:StartSession", lambda: ssm.describe_sessions(State="Active"))
