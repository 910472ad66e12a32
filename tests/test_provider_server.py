"""When terraform reattaches to the sandbox's AWS provider server, and when it starts its own provider.

The server (ops/sandbox/provider_server.py) serves what the provider would for a sandbox run, so a run
uses it only where that holds: a listening socket, the version the stack pins, and the environment the run
would give its own provider. Here a listening Unix socket in the test stands in for the server.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import facts, terraform
from ops.config import load_env

VERSION = terraform.DEFAULT_AWS_PROVIDER_VERSION


@pytest.fixture
def listening() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="bl-ps-"))
    path = folder / "provider.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            server.listen(4)
            yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record(state: Path, *, env: dict[str, str], addr: str, version: str = VERSION) -> str:
    reattach = {terraform.AWS_PROVIDER: {"Protocol": "grpc", "ProtocolVersion": 5, "Pid": 1, "Test": True,
                                         "Addr": {"Network": "unix", "String": addr}}}
    (state / facts.PROVIDER_SERVER_FILE).write_text(json.dumps(
        {"reattach": reattach, "version": version, "fingerprint": terraform.provider_fingerprint(env)}))
    return json.dumps(reattach)


def _sandbox_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv(facts.STATE_DIR_ENV, str(state))
    (state / "endpoints.json").write_text(json.dumps({"default": "http://127.0.0.1:1234"}))
    return state


def test_a_run_with_the_servers_environment_reattaches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       listening: Path) -> None:
    state = _sandbox_state(tmp_path, monkeypatch)
    env = terraform.sandbox_provider_env(load_env("sandbox"))
    assert terraform.provider_server(env, version=VERSION) is None, "no server recorded: terraform starts its own"
    value = _record(state, env=env, addr=str(listening))
    assert terraform.provider_server(env, version=VERSION) == value
    assert terraform.provider_server(env, version=f"= {VERSION}") == value, "the pin as the synthesized JSON has it"


@pytest.mark.parametrize("change", ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_REGION", "HTTPS_PROXY",
                                    "no_proxy", "TF_LOG", "SSL_CERT_FILE"])
def test_another_environment_for_the_provider_starts_its_own(change: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, listening: Path) -> None:
    state = _sandbox_state(tmp_path, monkeypatch)
    env = terraform.sandbox_provider_env(load_env("sandbox"))
    _record(state, env=env, addr=str(listening))
    assert terraform.provider_server({**env, change: "something else"}, version=VERSION) is None


def test_what_the_provider_does_not_read_keeps_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         listening: Path) -> None:
    state = _sandbox_state(tmp_path, monkeypatch)
    env = terraform.sandbox_provider_env(load_env("sandbox"))
    value = _record(state, env=env, addr=str(listening))
    for name in ("PATH", "PYTEST_CURRENT_TEST", "TF_DATA_DIR", "GOGC", "COLUMNS"):
        assert terraform.provider_server({**env, name: "other"}, version=VERSION) == value, name


def test_a_dead_server_another_version_or_a_damaged_record_start_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listening: Path) -> None:
    state = _sandbox_state(tmp_path, monkeypatch)
    env = terraform.sandbox_provider_env(load_env("sandbox"))
    _record(state, env=env, addr=str(tmp_path / "gone.sock"))
    assert terraform.provider_server(env, version=VERSION) is None, "nothing listens there"
    _record(state, env=env, addr=str(listening), version="5.99.0")
    assert terraform.provider_server(env, version=VERSION) is None, "the stack pins another version"
    (state / facts.PROVIDER_SERVER_FILE).write_text('{"reattach": {"registry.terraform.io/hashicorp/aws": 1}')
    assert terraform.provider_server(env, version=VERSION) is None, "half a file"
    (state / facts.PROVIDER_SERVER_FILE).write_text(json.dumps(
        {"reattach": {"x": 1}, "version": VERSION, "fingerprint": terraform.provider_fingerprint(env)}))
    assert terraform.provider_server(env, version=VERSION) is None, "no AWS provider in it"


def test_only_a_sandbox_runs_aws_commands_through_it_and_init_never(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   listening: Path) -> None:
    state = _sandbox_state(tmp_path, monkeypatch)
    work = tmp_path / "stack"
    work.mkdir()
    (work / "cdk.tf.json").write_text(json.dumps(
        {"terraform": {"required_providers": {"aws": {"source": "aws", "version": VERSION}}}}))
    box = terraform.Terraform(load_env("sandbox"), work)
    monkeypatch.setattr(box, "_prepared_env", terraform.child_env({"PATH": "/bin"}, {}))
    server_env = terraform.child_env({"PATH": "/usr/bin"}, {})
    terraform.apply_sandbox_env(server_env, load_env("sandbox"))
    _record(state, env=server_env, addr=str(listening))
    assert terraform.REATTACH_ENV in box._env(), "plan, apply, import, show, state: the server"
    # init would install nothing for a reattached provider and leave it out of the lock file.
    assert terraform.REATTACH_ENV not in box._env(reattach=False)
    assert terraform.REATTACH_ENV not in box._env(backend=False), "validate needs no sandbox"
    prod = terraform.Terraform(load_env("prod"), work)
    monkeypatch.setattr(prod, "_prepared_env", {"PATH": "/bin"})
    assert terraform.REATTACH_ENV not in prod._env()


def test_the_sandbox_drops_a_ca_bundle_it_does_not_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The emulator is plain HTTP; the AWS provider configured twice with a bundle fails (the server is).
    _sandbox_state(tmp_path, monkeypatch)
    env = {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}
    terraform.apply_sandbox_env(env, load_env("sandbox"))
    assert "AWS_CA_BUNDLE" not in env
