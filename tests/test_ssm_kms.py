"""KMS session encryption: preferences name a key, the agent asks for it, payloads are AES-GCM end to end."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from cli._common import session_line
from ops.ssm.client import PortSession
from ops.ssm.crypto import EncryptionError, SessionCipher
from ops.ssm.errors import EncryptionRequired
from tests.ssm_support import DB_HOST, DB_PORT, EndpointBox, EndpointThread, create_relay

pytest_plugins = ["tests.ssm_fixtures"]

# Its own region: the preferences document would otherwise encrypt every session of the shared moto.
KMS_REGION = "eu-central-1"


def aws(service: str, url: str) -> Any:
    return boto3.client(service, region_name=KMS_REGION, endpoint_url=url,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def kms_box(moto_url: str, echo_server: tuple[str, int],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EndpointBox, str]]:
    key = aws("kms", moto_url).create_key(Description="sessions")["KeyMetadata"]["Arn"]
    content = {"schemaVersion": "1.0", "description": "Session Manager preferences", "sessionType": "Standard_Stream",
               "inputs": {"kmsKeyId": key, "runAsEnabled": False}}
    aws("ssm", moto_url).create_document(Name="SSM-SessionManagerRunShell", Content=json.dumps(content),
                                         DocumentType="Session", DocumentFormat="JSON")
    relay = create_relay(moto_url, region=KMS_REGION)
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path_factory.mktemp("kms")).start()
    box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
    box.map_host(DB_HOST, DB_PORT, echo_server)
    try:
        yield box, key
    finally:
        endpoint.stop()


def start(box: EndpointBox) -> dict[str, Any]:
    result: dict[str, Any] = aws("ssm", box.endpoint.url).start_session(
        Target=box.relay, DocumentName="AWS-StartPortForwardingSessionToRemoteHost",
        Parameters={"host": [DB_HOST], "portNumber": [str(DB_PORT)]})
    return result


def test_port_session_is_not_encrypted_even_with_a_preferences_key(kms_box: tuple[EndpointBox, str]) -> None:
    """amazon-ssm-agent, agent/session/plugins/sessionplugin/sessionplugin.go isEncryptionEnabled:
    `kmsKeyId != "" && pluginName != Port`. A port session never asks for KMS, whatever the preferences
    say; the sandbox used to, and the real plugin then failed on `kms.<region>.amazonaws.com`.
    A client without any KMS access must carry the session."""
    box, _ = kms_box
    started = start(box)
    events: list[str] = []

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], on_event=events.append,  # no kms_client at all
                         ca_file=box.endpoint.ca_file)
        await ps.start()
        assert ps.cipher is None and ps.session_type == "Port"
        server = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        blob = os.urandom(100_000)
        writer.write(blob)
        assert await reader.readexactly(len(blob)) == blob
        writer.close()
        server.close()
        await ps.close()

    asyncio.run(main())
    assert not any("KMS" in e for e in events)


def exec_task(box: EndpointBox, cluster: str, tid: str, *, kms_key: str) -> dict[str, Any]:
    """A running exec-enabled task in `cluster`, whose executeCommandConfiguration names `kms_key` (or none)."""
    task = {"taskArn": f"arn:aws:ecs:{KMS_REGION}:123456789012:task/{cluster}/{tid}",
            "clusterArn": f"arn:aws:ecs:{KMS_REGION}:123456789012:cluster/{cluster}", "lastStatus": "RUNNING",
            "enableExecuteCommand": True,
            "containers": [{"name": "app", "runtimeId": f"{tid}-1234567890"}]}
    path = box.endpoint.state_dir / "ecs_tasks.json"
    tasks = json.loads(path.read_text())["tasks"] if path.exists() else []
    path.write_text(json.dumps({"tasks": [*tasks, task]}))
    ecs = aws("ecs", box.endpoint.url)
    config = {"executeCommandConfiguration": {"kmsKeyId": kms_key, "logging": "DEFAULT"}} if kms_key else {}
    ecs.create_cluster(clusterName=cluster, configuration=config)
    session: dict[str, Any] = ecs.execute_command(cluster=cluster, task=tid, container="app", interactive=True,
                                                  command="sh -c 'echo sealed-output; exit 4'")["session"]
    return session


def test_without_kms_access_the_client_says_what_to_do(kms_box: tuple[EndpointBox, str]) -> None:
    box, key = kms_box
    tid = "abcdefabcdefabcdefabcdefabcdef01"
    session = exec_task(box, "kms-cluster-2", tid, kms_key=key)

    async def main() -> None:
        from ops.ssm.client import ShellSession

        shell = ShellSession(stream_url=session["streamUrl"], token=session["tokenValue"],
                             session_id=session["sessionId"], ca_file=box.endpoint.ca_file)
        with pytest.raises(EncryptionRequired, match="KMS session encryption") as info:
            await shell.start()
        # The command line's words for it name the way out.
        assert "--transport plugin" in session_line(info.value)

    asyncio.run(main())


def test_cipher_halves_and_tamper_detection() -> None:
    key = os.urandom(64)
    client, agent = SessionCipher(key), SessionCipher(key, agent_side=True)
    assert agent.decrypt(client.encrypt(b"to agent")) == b"to agent"
    assert client.decrypt(agent.encrypt(b"to client")) == b"to client"
    sealed = bytearray(client.encrypt(b"x" * 32))
    assert len(sealed) == 12 + 32 + 16  # nonce + ciphertext + GCM tag
    sealed[20] ^= 1
    with pytest.raises(EncryptionError, match="authentication"):
        agent.decrypt(bytes(sealed))


def test_encrypted_ecs_shell_uses_the_aws_target_name(kms_box: tuple[EndpointBox, str]) -> None:
    """ECS Exec encrypts with the cluster's executeCommandConfiguration.kmsKeyId (not the preferences
    document), and its KMS context target is ecs:<cluster>_<task id>_<runtime id>, as AWS names it."""
    from ops.ssm.client import ShellSession

    box, key = kms_box
    tid = "fedcba9876543210fedcba9876543210"
    session = exec_task(box, "kms-cluster", tid, kms_key=key)
    read_fd, write_fd = os.pipe()

    async def main() -> int:
        shell = ShellSession(stream_url=session["streamUrl"], token=session["tokenValue"],
                             session_id=session["sessionId"], target=f"ecs:kms-cluster_{tid}_{tid}-1234567890",
                             kms_client=aws("kms", box.moto_url), ca_file=box.endpoint.ca_file)
        await shell.start()
        assert shell.cipher is not None
        return await asyncio.wait_for(shell.run(stdin_fd=None, stdout_fd=write_fd), 20)

    try:
        code = asyncio.run(main())
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        assert b"sealed-output" in pipe.read()
    assert code == 4


def test_ecs_shell_without_exec_kms_skips_the_handshake(kms_box: tuple[EndpointBox, str]) -> None:
    """A cluster without exec KMS (the preferences document's key does not count for ECS Exec): the agent
    skips the handshake (amazon-ssm-agent sessionplugin.go: RequireHandshake() false for
    InteractiveCommands, so dataChannel.SkipHandshake) and the client starts on the first output, as the
    plugin's ProcessFirstMessage (session-manager-plugin session/sessionhandler.go) does. The native
    client used to wait 30 s for a HandshakeComplete that never comes."""
    from ops.ssm.client import ShellSession

    box, _ = kms_box
    tid = "0123456789abcdef0123456789abcd02"
    session = exec_task(box, "plain-cluster", tid, kms_key="")
    read_fd, write_fd = os.pipe()

    async def main() -> tuple[int, ShellSession]:
        shell = ShellSession(stream_url=session["streamUrl"], token=session["tokenValue"],
                             session_id=session["sessionId"], ca_file=box.endpoint.ca_file)
        await asyncio.wait_for(shell.start(), 10)
        return await asyncio.wait_for(shell.run(stdin_fd=None, stdout_fd=write_fd), 20), shell

    try:
        code, shell = asyncio.run(main())
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        assert b"sealed-output" in pipe.read()
    assert code == 4
    assert shell.cipher is None and shell.agent_version == "" and shell.session_type == "Standard_Stream"


@pytest.mark.slow
def test_real_plugin_shell_with_exec_kms(kms_box: tuple[EndpointBox, str], tmp_path: Path) -> None:
    """AWS's plugin on an ECS Exec shell encrypted with the cluster's exec key: it asks KMS for a data key
    at kms.<region>.amazonaws.com (session-manager-plugin src/encryption/kmsservice.go: the default
    endpoint, none configurable), which the sandbox answers through its HTTPS proxy with moto's KMS."""
    from tests.ssm_support import real_plugin, run_plugin_shell

    plugin = real_plugin()
    box, key = kms_box
    tid = "0123456789abcdef0123456789abcd03"
    session = exec_task(box, "kms-cluster-plugin", tid, kms_key=key)
    answer = {"SessionId": session["sessionId"], "TokenValue": session["tokenValue"], "StreamUrl": session["streamUrl"]}
    proxy = (box.endpoint.state_dir / "tls" / "aws_api_proxy").read_text().strip()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HOME": str(tmp_path),
           "SSL_CERT_FILE": box.endpoint.ca_file, "AWS_CA_BUNDLE": box.endpoint.ca_file, "HTTPS_PROXY": proxy}
    code, out = run_plugin_shell(plugin, answer=answer, region=KMS_REGION,
                                 target=f"ecs:kms-cluster-plugin_{tid}_{tid}-1234567890", endpoint_url=box.endpoint.url,
                                 env=env)
    assert b"sealed-output" in out, out
    assert code == 0, out
