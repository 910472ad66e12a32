"""Native client against the local endpoint, over real loopback sockets, with moto as EC2/STS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import botocore.exceptions
import pytest

from ops.ssm import smux
from ops.ssm.client import PortSession
from ops.ssm.errors import ChannelClosed
from tests.ssm_support import DB_HOST, DB_PORT, EndpointBox, EndpointThread, create_relay

pytest_plugins = ["tests.ssm_fixtures"]


Scenario = Callable[[PortSession, int], Awaitable[None]]


def run_port_session(box: EndpointBox, scenario: Scenario, *, close: bool = True) -> tuple[str, PortSession]:
    started = box.start_port_session()
    sid = started["SessionId"]
    holder: list[PortSession] = []

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"], session_id=sid,
                         ca_file=box.endpoint.ca_file)
        holder.append(ps)
        await ps.start()
        server = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await scenario(ps, port)
        finally:
            server.close()
            if close:
                await ps.close()

    asyncio.run(main())
    return sid, holder[0]


async def echo_roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    writer.close()
    return got


def test_handshake_and_one_connection(ssm_sandbox: EndpointBox) -> None:
    async def scenario(ps: PortSession, port: int) -> None:
        assert ps.agent_version == "3.3.1142.0"
        assert ps.multiplexed
        assert await echo_roundtrip(port, b"select 1;") == b"select 1;"

    sid, _ = run_port_session(ssm_sandbox, scenario)
    stats = ssm_sandbox.endpoint.get(f"/_sandbox/sessions/{sid}")
    assert stats["status"] == "Terminated"


def test_clean_close_terminates_and_is_listed_in_history(ssm_sandbox: EndpointBox) -> None:
    async def scenario(ps: PortSession, port: int) -> None:
        assert await echo_roundtrip(port, b"x") == b"x"

    sid, ps = run_port_session(ssm_sandbox, scenario)
    assert ps.closed
    ssm = ssm_sandbox.endpoint.ssm()
    history = {s["SessionId"]: s for s in ssm.describe_sessions(State="History")["Sessions"]}
    assert history[sid]["Status"] == "Terminated"
    assert history[sid]["Reason"] == "test"
    assert history[sid]["Owner"].startswith("arn:aws:")
    assert "EndDate" in history[sid]
    active = [s["SessionId"] for s in ssm.describe_sessions(State="Active")["Sessions"]]
    assert sid not in active


def test_terminate_session_api_closes_the_channel(ssm_sandbox: EndpointBox) -> None:
    ssm = ssm_sandbox.endpoint.ssm()

    async def scenario(ps: PortSession, port: int) -> None:
        assert await echo_roundtrip(port, b"ping") == b"ping"
        active = [s["SessionId"] for s in ssm.describe_sessions(State="Active")["Sessions"]]
        assert ps.session_id in active
        await asyncio.to_thread(ssm.terminate_session, SessionId=ps.session_id)
        await asyncio.wait_for(ps.wait_closed(), 5)  # agent-initiated close: no exception

    sid, _ = run_port_session(ssm_sandbox, scenario)
    history = {s["SessionId"]: s["Status"] for s in ssm.describe_sessions(State="History")["Sessions"]}
    assert history[sid] == "Terminated"


def test_64_concurrent_connections_multiplexed(ssm_sandbox: EndpointBox) -> None:
    async def scenario(ps: PortSession, port: int) -> None:
        assert ps.multiplexed
        blobs = [os.urandom(20_000 + i * 517) for i in range(64)]
        results = await asyncio.gather(*(echo_roundtrip(port, b) for b in blobs))
        assert results == blobs

    run_port_session(ssm_sandbox, scenario)


def test_loss_and_reorder_injected_in_endpoint_are_recovered(ssm_sandbox: EndpointBox) -> None:
    ssm_sandbox.endpoint.post("/_sandbox/loss", {"drop_every": 7, "reorder_every": 5})
    try:
        async def scenario(ps: PortSession, port: int) -> None:
            blob = os.urandom(1024 * 1024)  # ~2000 messages each way at the agent's 1 KiB
            assert await echo_roundtrip(port, blob) == blob
            assert ps.channel is not None
            assert ps.channel.resent > 0

        run_port_session(ssm_sandbox, scenario)
        stats = ssm_sandbox.endpoint.post("/_sandbox/loss", {})
        assert stats["dropped"] > 0
        assert stats["reordered"] > 0
    finally:
        ssm_sandbox.endpoint.post("/_sandbox/loss", {})


def test_pause_publication_is_honoured(ssm_sandbox: EndpointBox) -> None:
    async def scenario(ps: PortSession, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        stats_path = f"/_sandbox/sessions/{ps.session_id}"
        base = (await asyncio.to_thread(ssm_sandbox.endpoint.get, stats_path))["received_bytes"]
        await asyncio.to_thread(ssm_sandbox.endpoint.post, f"{stats_path}/publication/pause")
        await asyncio.sleep(0.1)
        assert ps.channel is not None and not ps.channel.publishing.is_set()
        writer.write(b"during-pause")
        await asyncio.sleep(0.5)
        assert (await asyncio.to_thread(ssm_sandbox.endpoint.get, stats_path))["received_bytes"] == base
        await asyncio.to_thread(ssm_sandbox.endpoint.post, f"{stats_path}/publication/start")
        assert await asyncio.wait_for(reader.readexactly(12), 5) == b"during-pause"
        writer.close()

    run_port_session(ssm_sandbox, scenario)


def test_dropped_websocket_is_resumed_with_open_connections_intact(ssm_sandbox: EndpointBox) -> None:
    """A dropped websocket is not the end of the session (AWS keeps the agent's side: amazon-ssm-agent
    datachannel.go keeps its stream buffers across the client's reconnects). wait_closed() says
    `dropped`, resume() carries on over ResumeSession's websocket, and a TCP connection open through
    the tunnel across the drop gets every byte, in order."""
    ssm = ssm_sandbox.endpoint.ssm()

    async def scenario(ps: PortSession, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent, got = hashlib.sha256(), hashlib.sha256()
        blob = os.urandom(600_000)
        half = len(blob) // 2
        writer.write(blob[:half])
        sent.update(blob[:half])
        first = await reader.readexactly(100_000)  # the transfer is under way
        got.update(first)
        await asyncio.to_thread(ssm_sandbox.endpoint.post, f"/_sandbox/sessions/{ps.session_id}/drop")
        with pytest.raises(ChannelClosed) as info:
            await asyncio.wait_for(ps.wait_closed(), 5)
        assert info.value.dropped and not ps.closed
        writer.write(blob[half:])  # written while no websocket exists: waits in the channel's window
        sent.update(blob[half:])
        resumed = await asyncio.to_thread(ssm.resume_session, SessionId=ps.session_id)
        await ps.resume(stream_url=resumed["StreamUrl"], token=resumed["TokenValue"])
        got.update(await asyncio.wait_for(reader.readexactly(len(blob) - len(first)), 30))
        assert got.hexdigest() == sent.hexdigest()
        writer.close()
        assert await echo_roundtrip(port, b"after") == b"after"  # and new connections work
        stats = await asyncio.to_thread(ssm_sandbox.endpoint.get, f"/_sandbox/sessions/{ps.session_id}")
        assert stats["websockets"] == 2 and stats["status"] == "Connected"

    run_port_session(ssm_sandbox, scenario)


def test_wrong_token_is_refused(ssm_sandbox: EndpointBox) -> None:
    started = ssm_sandbox.start_port_session()

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token="not-the-token", session_id=started["SessionId"],
                         ca_file=ssm_sandbox.endpoint.ca_file)
        with pytest.raises(ChannelClosed):
            await ps.start()

    asyncio.run(main())


def test_start_session_validation(ssm_sandbox: EndpointBox, moto_url: str) -> None:
    ssm = ssm_sandbox.endpoint.ssm()
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidDocument"):
        ssm.start_session(Target=ssm_sandbox.relay, DocumentName="AWS-RunShellScript")
    with pytest.raises(botocore.exceptions.ClientError, match="TargetNotConnected"):
        ssm.start_session(Target="i-0123456789abcdef0", DocumentName="AWS-StartPortForwardingSession",
                          Parameters={"portNumber": ["5432"]})
    stopped = create_relay(moto_url, running=False)
    with pytest.raises(botocore.exceptions.ClientError, match="TargetNotConnected"):
        ssm.start_session(Target=stopped, DocumentName="AWS-StartPortForwardingSession",
                          Parameters={"portNumber": ["5432"]})
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [ssm_sandbox.relay, stopped]}])
    ping = {i["InstanceId"]: i["PingStatus"] for i in info["InstanceInformationList"]}
    assert ping == {ssm_sandbox.relay: "Online", stopped: "ConnectionLost"}


def test_other_calls_are_proxied_to_moto(ssm_sandbox: EndpointBox) -> None:
    ssm = ssm_sandbox.endpoint.ssm()
    ssm.put_parameter(Name="/bastionless/test", Value="v", Type="String")
    assert ssm.get_parameter(Name="/bastionless/test")["Parameter"]["Value"] == "v"


def test_unreachable_remote_host_reports_connect_error(ssm_sandbox: EndpointBox) -> None:
    started = ssm_sandbox.start_port_session(host="nowhere.internal", port=5432)
    events: list[str] = []

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], on_event=events.append, ca_file=ssm_sandbox.endpoint.ca_file)
        await ps.start()
        server = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing forwarded
        server.close()
        await ps.close()

    asyncio.run(main())
    assert any("could not connect" in e for e in events)


@pytest.fixture(scope="module")
def old_agent_sandbox(moto_url: str, relay: str, echo_server: tuple[str, int],
                      tmp_path_factory: pytest.TempPathFactory) -> object:
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path_factory.mktemp("old-agent"),
                              agent_version="3.0.161.0").start()
    box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
    box.map_host(DB_HOST, DB_PORT, echo_server)
    yield box
    endpoint.stop()


def test_basic_mode_with_an_old_agent_serves_sequential_connections(old_agent_sandbox: EndpointBox) -> None:
    async def scenario(ps: PortSession, port: int) -> None:
        assert not ps.multiplexed
        for i in range(3):
            blob = os.urandom(100_000 + i)
            assert await echo_roundtrip(port, blob) == blob

    run_port_session(old_agent_sandbox, scenario)


@pytest.mark.slow
def test_100_mb_checksummed_transfer(ssm_fast_sandbox: EndpointBox) -> None:
    """Fast agent profile: 100 MB at the real agent's ~1 MB/s would take minutes; this test is about
    integrity under volume, and bench/tunnel measures the real pace."""
    total = 100 * 1024 * 1024

    async def scenario(ps: PortSession, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        block = os.urandom(1 << 20)
        sent_hash = hashlib.sha256()

        async def send() -> None:
            for i in range(total >> 20):
                chunk = bytes([i & 0xFF]) + block[1:]
                sent_hash.update(chunk)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        got_hash = hashlib.sha256()
        got = 0
        while got < total:
            data = await reader.read(1 << 20)
            assert data
            got += len(data)
            got_hash.update(data)
        await sender
        assert got == total
        assert got_hash.hexdigest() == sent_hash.hexdigest()
        writer.close()

    run_port_session(ssm_fast_sandbox, scenario)


def test_slow_reader_bounds_client_buffering(ssm_fast_sandbox: EndpointBox) -> None:
    """A local client that stops reading must stall the agent (acks withheld), not grow memory.

    Fast agent profile: at the real agent's ~1 MB/s the client never has more than a second's worth to
    buffer, so the bound would hold whatever the client did; the agent has to outrun the reader."""
    sandbox = ssm_fast_sandbox
    import socketserver
    import threading

    total = 24 * 1024 * 1024

    class Source(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            block = b"z" * (1 << 20)
            for _ in range(total >> 20):
                self.request.sendall(block)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Source)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sandbox.map_host("source.internal", 9000, ("127.0.0.1", int(server.server_address[1])))
    started = sandbox.start_port_session(host="source.internal", port=9000)

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], ca_file=sandbox.endpoint.ca_file)
        await ps.start()
        listener = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.sockets[0].getsockname()[1],
                                                      limit=64 * 1024)
        first = await reader.read(65536)
        await asyncio.sleep(1.0)  # stop reading: socket buffers fill, then the stream buffer
        assert ps._mux is not None
        buffered = max(s.buffered for s in ps._mux.streams.values())
        assert buffered <= smux.STREAM_BUFFER + 2 * ps.payload_size * 64
        got = len(first)
        while got < total:
            chunk = await reader.read(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == total
        writer.close()
        listener.close()
        await ps.close()

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()


def test_connection_after_the_channel_closed_is_refused_quietly(ssm_sandbox: EndpointBox) -> None:
    async def scenario(ps: PortSession, port: int) -> None:
        await asyncio.to_thread(ssm_sandbox.endpoint.ssm().terminate_session, SessionId=ps.session_id)
        await asyncio.wait_for(ps.wait_closed(), 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"late")
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset, equally a refusal
        writer.close()

    run_port_session(ssm_sandbox, scenario)


def test_basic_mode_server_speaks_first(old_agent_sandbox: EndpointBox) -> None:
    """The basic-mode agent dials at session start: a greeting sent before any local connection is kept."""
    import socketserver
    import threading

    class Greeter(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"220 ready\r\n")
            while data := self.request.recv(65536):
                self.request.sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Greeter)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    old_agent_sandbox.map_host("smtp.internal", 25, ("127.0.0.1", int(server.server_address[1])))
    started = old_agent_sandbox.start_port_session(host="smtp.internal", port=25)

    async def main() -> None:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], ca_file=old_agent_sandbox.endpoint.ca_file)
        await ps.start()
        assert not ps.multiplexed
        await asyncio.sleep(0.3)  # the greeting reaches the client before anyone connects locally
        listener = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.sockets[0].getsockname()[1])
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b"220 ready\r\n"
        writer.write(b"EHLO x\r\n")
        assert await asyncio.wait_for(reader.readexactly(8), 5) == b"EHLO x\r\n"
        writer.close()
        listener.close()
        await ps.close()

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()


def test_data_channel_is_wss_and_the_client_verifies_it(ssm_sandbox: EndpointBox,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Difference 5. AWS answers StartSession with wss://ssmmessages.<region>.amazonaws.com/v1/data-channel/...
    (session-manager-plugin src/communicator/websocketchannel.go dials it with TLS). The sandbox serves
    the data channel over TLS too, signed by its own CA, so a client that skipped verification, or only
    spoke ws://, fails here as it would against AWS."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    started = ssm_sandbox.start_port_session()
    assert started["StreamUrl"].startswith("wss://127.0.0.1:")
    assert "/v1/data-channel/" in started["StreamUrl"]

    async def main() -> None:
        untrusting = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                                 session_id=started["SessionId"])
        with pytest.raises(ChannelClosed, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await untrusting.start()
        trusting = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                               session_id=started["SessionId"], ca_file=ssm_sandbox.endpoint.ca_file)
        await trusting.start()
        assert trusting.session_type == "Port"
        await trusting.close()

    asyncio.run(main())


def test_maximum_session_duration_ends_the_session_with_channel_closed(moto_url: str, echo_server: tuple[str, int],
                                                                         tmp_path: Path) -> None:
    """Difference 7. The service ends a session at the preferences' maxSessionDuration even while it is in
    use, and tells the client with channel_closed (not a dropped websocket), so a client can tell it from a
    network failure. Scaled: 1 minute at time_scale 0.02 is 1.2 s."""
    import boto3

    region = "ap-southeast-2"  # its own preferences document, apart from the other tests' region
    boto3.client("ssm", region_name=region, endpoint_url=moto_url, aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_document(
        Name="SSM-SessionManagerRunShell", DocumentType="Session", DocumentFormat="JSON",
        Content=json.dumps({"schemaVersion": "1.0", "sessionType": "Standard_Stream",
                            "inputs": {"idleSessionTimeout": "60", "maxSessionDuration": "1"}}))
    relay = create_relay(moto_url, region=region)
    endpoint = EndpointThread(moto_url=moto_url, state_dir=tmp_path / "state", time_scale=0.02).start()
    try:
        box = EndpointBox(endpoint=endpoint, relay=relay, moto_url=moto_url)
        box.map_host(DB_HOST, DB_PORT, echo_server)
        started = boto3.client("ssm", region_name=region, endpoint_url=endpoint.url, aws_access_key_id="testing",
                               aws_secret_access_key="testing").start_session(
            Target=relay, DocumentName="AWS-StartPortForwardingSessionToRemoteHost",
            Parameters={"host": [DB_HOST], "portNumber": [str(DB_PORT)]})

        async def main() -> PortSession:
            ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                             session_id=started["SessionId"], ca_file=endpoint.ca_file)
            await ps.start()
            server = await asyncio.start_server(ps.handle_connection, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]

            async def busy() -> None:
                while not ps.closed:  # in use all along: the maximum duration is not an idle timeout
                    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                        await echo_roundtrip(port, b"still here")
                    await asyncio.sleep(0.05)

            user = asyncio.ensure_future(busy())
            await asyncio.wait_for(ps.wait_closed(), 15)  # returns: an end, not a drop
            user.cancel()
            server.close()
            await ps.close()
            return ps

        ps = asyncio.run(main())
        assert not ps.dropped
        assert ps.close_output == "Your session has reached its maximum duration and has been terminated."
    finally:
        endpoint.stop()


@pytest.mark.parametrize("host", ["169.254.169.254", "10.40.0.2"])
def test_forwarding_to_imds_or_the_vpc_resolver_is_refused(ssm_sandbox: EndpointBox, host: str) -> None:
    """Difference 6 end to end: the session to the instance metadata service, or to the relay VPC's DNS
    resolver (10.40.0.0/16 + 2), ends after the handshake with the agent's error, which the client shows."""
    started = ssm_sandbox.start_port_session(host=host, port=80)
    events: list[str] = []

    async def main() -> PortSession:
        ps = PortSession(stream_url=started["StreamUrl"], token=started["TokenValue"],
                         session_id=started["SessionId"], on_event=events.append, ca_file=ssm_sandbox.endpoint.ca_file)
        await ps.start()
        await asyncio.wait_for(ps.wait_closed(), 10)
        return ps

    ps = asyncio.run(main())
    assert ps.close_output == f"Forwarding to IP address {host} is forbidden."
    assert any("is forbidden" in e for e in events)


def test_a_session_terminated_while_its_channel_opens_stays_terminated(ssm_sandbox: EndpointBox) -> None:
    """A client stopped right after StartSession (SIGTERM to `invoke psql`) terminates the session while the
    plugin is still opening its data channel. The service keeps it Terminated and closes that channel; the
    sandbox used to mark it Connected again, then Disconnected: a session left open by nobody."""
    import ssl

    import aiohttp

    started = ssm_sandbox.start_port_session()
    sid = started["SessionId"]

    async def main() -> None:
        tls = ssl.create_default_context(cafile=ssm_sandbox.endpoint.ca_file)
        async with aiohttp.ClientSession() as http, http.ws_connect(started["StreamUrl"], ssl=tls) as ws:
            await asyncio.to_thread(ssm_sandbox.endpoint.ssm().terminate_session, SessionId=sid)
            await ws.send_str(json.dumps({"MessageSchemaVersion": "1.0", "RequestId": "r-1",
                                          "TokenValue": started["TokenValue"]}))
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg

    asyncio.run(main())
    ssm = ssm_sandbox.endpoint.ssm()
    assert [s["Status"] for s in ssm.describe_sessions(State="History")["Sessions"] if s["SessionId"] == sid] == [
        "Terminated"]
    assert sid not in [s["SessionId"] for s in ssm.describe_sessions(State="Active")["Sessions"]]
