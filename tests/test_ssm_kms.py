"""KMS session encryption: preferences name a key, the agent asks for it, payloads are AES-GCM end to end."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

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


def test_encrypted_port_session_round_trip(kms_box: tuple[EndpointBox, str]) -> None:
    box, _ = kms_box
    started = start(box)
    events: list[str] = []

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], target=box.relay, kms_client=aws("kms", box.moto_url),
                         on_event=events.append)
        await ps.start()
        assert ps.cipher is not None
        server = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        blob = os.urandom(300_000)
        writer.write(blob)
        assert await reader.readexactly(len(blob)) == blob
        writer.close()
        server.close()
        await ps.close()

    asyncio.run(main())
    assert any("encrypted using AWS KMS" in e for e in events)


def test_without_kms_access_the_client_says_what_to_do(kms_box: tuple[EndpointBox, str]) -> None:
    box, _ = kms_box
    started = start(box)

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"])
        with pytest.raises(EncryptionRequired, match="KMS session encryption"):
            await ps.start()

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
    """ECS Exec target in the KMS context is ecs:<cluster>_<task id>_<runtime id>, as AWS names it."""
    from ops.ssm.client import ShellSession

    box, _ = kms_box
    tid = "fedcba9876543210fedcba9876543210"
    task = {"taskArn": f"arn:aws:ecs:{KMS_REGION}:123456789012:task/kms-cluster/{tid}",
            "clusterArn": f"arn:aws:ecs:{KMS_REGION}:123456789012:cluster/kms-cluster", "lastStatus": "RUNNING",
            "enableExecuteCommand": True,
            "containers": [{"name": "app", "runtimeId": f"{tid}-1234567890"}]}
    (box.endpoint.state_dir / "ecs_tasks.json").write_text(json.dumps({"tasks": [task]}))
    ecs = aws("ecs", box.endpoint.url)
    ecs.create_cluster(clusterName="kms-cluster")
    session = ecs.execute_command(cluster="kms-cluster", task=tid, container="app", interactive=True,
                                  command="sh -c 'echo sealed-output; exit 4'")["session"]
    read_fd, write_fd = os.pipe()

    async def main() -> int:
        shell = ShellSession(stream_url=session["streamUrl"], token=session["tokenValue"],
                             session_id=session["sessionId"], target=f"ecs:kms-cluster_{tid}_{tid}-1234567890",
                             kms_client=aws("kms", box.moto_url))
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
