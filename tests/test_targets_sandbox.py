"""`invoke tunnel --target NAME`: an extra target of the env, through its own fixed document, in the sandbox
(the endpoint reads the document from the emulator and honours its fixed host and port, as AWS does)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from ops.errors import OpsError
from ops.iam_policies import port_document_content, target_document_name
from ops.tunnel import open_tunnel
from tests.ssm_support import EchoHandler, EchoServer, echo_once
from tests.tunnel_fixtures import TunnelWorld, run_cli

pytest_plugins = ["tests.tunnel_fixtures"]

TARGET_HOST = "cache.internal.example"
TARGET_PORT = 6379


@pytest.fixture
def echo() -> Iterator[int]:
    server = EchoServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _with_target(world: TunnelWorld, echo_port: int) -> None:
    """The env declares the target; the stack's document for it; the relay's network reaches it (mapped)."""
    path = world.envs_dir / "sandbox.toml"
    if "[[targets]]" not in path.read_text():
        path.write_text(path.read_text() + f'\n[[targets]]\nname = "cache"\nhost = "{TARGET_HOST}"\n'
                                           f'port = {TARGET_PORT}\ncidr = "10.40.20.0/24"\n')
    cfg = world.add_env("sandbox")
    ssm = world.client("ssm", cfg.region)
    name = target_document_name(cfg.stack_name, "cache")
    if not ssm.list_documents(Filters=[{"Key": "Name", "Values": [name]}])["DocumentIdentifiers"]:
        ssm.create_document(Name=name, DocumentType="Session", DocumentFormat="JSON", Content=json.dumps(
            port_document_content(host=TARGET_HOST, port=str(TARGET_PORT), what="the cache target")))
    world.map_host(TARGET_HOST, TARGET_PORT, echo_port)


def test_a_target_tunnel_forwards_to_the_target_through_its_document(pg_world: TunnelWorld, echo: int) -> None:
    _with_target(pg_world, echo)
    cfg = pg_world.add_env("sandbox")
    lines: list[str] = []
    with open_tunnel(cfg, transport="native", report=lines.append, target="cache") as info:
        assert (info.db_host, info.db_port) == (TARGET_HOST, TARGET_PORT)
        assert echo_once(info.local_port, b"PING\r\n" * 1000) == b"PING\r\n" * 1000
        (active,) = pg_world.active_sessions()
        assert active["DocumentName"] == target_document_name(cfg.stack_name, "cache")
    assert any("ready: target cache answered" in line for line in lines), lines
    assert pg_world.active_sessions() == []


def test_an_unknown_target_is_one_line_before_any_session(pg_world: TunnelWorld, echo: int) -> None:
    _with_target(pg_world, echo)
    proc = run_cli(pg_world, "tunnel", "--env", "sandbox", "--target", "queue", "--local-port", "0")
    assert proc.returncode != 0
    assert "error: --target 'queue' is not a target of sandbox (its targets: cache)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert pg_world.active_sessions() == []
    cfg = pg_world.add_env("sandbox")
    with pytest.raises(OpsError, match="not a target"), open_tunnel(cfg, target="queue"):
        pass
