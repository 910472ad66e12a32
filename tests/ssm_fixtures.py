"""Fixtures for the Session Manager tests (load with `pytest_plugins = ["tests.ssm_fixtures"]`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.ssm_support import (
    DB_HOST,
    DB_PORT,
    EchoHandler,
    EchoServer,
    EndpointBox,
    EndpointThread,
    create_relay,
    free_port,
    plugin_path,
)
from tests.tiers import require_tool


@pytest.fixture(scope="session")
def session_manager_plugin() -> str:
    """AWS's own client (tests.ssm_support.plugin_path); skipped on a laptop without it, a failure in CI."""
    return require_tool(plugin_path(), "AWS's session-manager-plugin is not installed (set "
                                       "BASTIONLESS_SESSION_MANAGER_PLUGIN to the binary)")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, int]]:
    server = EchoServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def relay(moto_url: str) -> str:
    return create_relay(moto_url)


@pytest.fixture(scope="module")
def ssm_sandbox(moto_url: str, relay: str, echo_server: tuple[str, int],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointBox]:
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path_factory.mktemp("ssm-state")).start()
    box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
    box.map_host(DB_HOST, DB_PORT, echo_server)
    try:
        yield box
    finally:
        endpoint.stop()


@pytest.fixture(scope="module")
def ssm_fast_sandbox(moto_url: str, relay: str, echo_server: tuple[str, int],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointBox]:
    """The sandbox with the agent's `fast` profile (16 KiB messages, no pause). Only for tests that move
    so much data that the real agent's ~1 MB/s would make them minutes long, or that need the agent to
    outrun a local reader; each says which in its docstring."""
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path_factory.mktemp("ssm-fast"), profile="fast").start()
    box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
    box.map_host(DB_HOST, DB_PORT, echo_server)
    try:
        yield box
    finally:
        endpoint.stop()
