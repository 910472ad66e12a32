"""The sandbox does what AWS does, not what we would like AWS to do: one test per difference found
(issue 12), each citing the agent or plugin source it follows. Fast: in-process, no sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import string
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from ops.facts import RELAY_HOSTS_FILE
from ops.sandbox import agent as agent_mod
from ops.sandbox.agent import PROFILES, AgentConnection, SessionSpec, forbidden_host
from ops.ssm import framing
from ops.ssm.client import PAYLOAD_SIZE, PortSession
from ops.ssm.framing import AgentMessage, PayloadType

KEY = "arn:aws:kms:us-east-1:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MUX_PROPERTIES = {"type": "LocalPortForwarding", "portNumber": "5432", "host": "db.internal"}


def make_agent(tmp_path: Path, *, kind: str = "port", kms: str = "", profile: str = "faithful",
               agent_version: str = agent_mod.SANDBOX_AGENT_VERSION) -> tuple[AgentConnection, list[AgentMessage]]:
    sent: list[AgentMessage] = []

    async def send_raw(frame: bytes) -> None:
        sent.append(framing.decode(frame))

    (tmp_path / RELAY_HOSTS_FILE).write_text(json.dumps({"db.internal:5432": "127.0.0.1:9"}))
    spec = SessionSpec(session_id="s-1", kind=kind, properties=MUX_PROPERTIES if kind == "port" else {},
                       command=["/bin/true"], target="i-0123", kms_key_id=kms)
    return AgentConnection(spec=spec, send_raw=send_raw, state_dir=tmp_path, profile=PROFILES[profile],
                           agent_version=agent_version), sent


def stream(sent: list[AgentMessage], ptype: int) -> list[AgentMessage]:
    return [m for m in sent if m.message_type == framing.OUTPUT_STREAM_DATA and m.payload_type == ptype]


def client_frame(ptype: int, payload: bytes, seq: int = 0) -> bytes:
    return framing.encode(AgentMessage(message_type=framing.INPUT_STREAM_DATA, payload=payload, payload_type=ptype,
                                       sequence_number=seq))


def test_port_session_handshake_never_asks_for_kms(tmp_path: Path) -> None:
    """Difference 1. amazon-ssm-agent agent/session/plugins/sessionplugin/sessionplugin.go:
    isEncryptionEnabled is `kmsKeyId != "" && pluginName != appconfig.PluginNamePort`."""
    async def main() -> list[AgentMessage]:
        agent, sent = make_agent(tmp_path, kind="port", kms=KEY)
        await agent.start()
        await agent.stop()
        return sent

    (request,) = stream(asyncio.run(main()), PayloadType.HANDSHAKE_REQUEST)
    actions = [a["ActionType"] for a in json.loads(request.payload)["RequestedClientActions"]]
    assert actions == ["SessionType"]


def test_shell_handshakes_only_to_agree_on_encryption(tmp_path: Path) -> None:
    """Differences 1 and 3. sessionplugin.go: `if RequireHandshake() || encryptionEnabled` then
    PerformHandshake (with KMSEncryption when a key is set), else SkipHandshake; InteractiveCommands
    (ECS Exec) does not require one (interactivecommands.go -> singlecommand.go RequireHandshake false)."""
    with_key, _ = make_agent(tmp_path, kind="shell", kms=KEY)
    without, _ = make_agent(tmp_path, kind="shell")
    port, _ = make_agent(tmp_path, kind="port")
    assert (with_key.requires_handshake, with_key.encryption_enabled) == (True, True)
    assert (without.requires_handshake, without.encryption_enabled) == (False, False)
    assert (port.requires_handshake, port.encryption_enabled) == (True, False)

    async def main() -> list[AgentMessage]:
        agent, sent = make_agent(tmp_path, kind="shell", kms=KEY)
        await agent.start()
        await agent.stop()
        return sent

    (request,) = stream(asyncio.run(main()), PayloadType.HANDSHAKE_REQUEST)
    actions = json.loads(request.payload)["RequestedClientActions"]
    assert [a["ActionType"] for a in actions] == ["SessionType", "KMSEncryption"]
    assert actions[1]["ActionParameters"]["KMSKeyId"] == KEY


def test_agent_ignores_the_payload_digest_and_honours_header_length(tmp_path: Path) -> None:
    """Difference 2. amazon-ssm-agent agent/session/contracts/agentmessage.go: Deserialize takes the
    payload from HeaderLength + 4 on, Validate checks HeaderLength, MessageType and CreatedDate only.
    A handshake response with a wrong digest is acted on (the agent completes the handshake)."""
    response = json.dumps({"ClientVersion": "1.2.650.0", "ProcessedClientActions": [
        {"ActionType": "SessionType", "ActionStatus": 1}], "Errors": None}).encode()
    frame = bytearray(client_frame(PayloadType.HANDSHAKE_RESPONSE, response))
    frame[80:112] = bytes(32)  # PayloadDigest zeroed
    with pytest.raises(framing.FramingError, match="digest"):
        framing.decode(bytes(frame))  # what the plugin (our client) checks

    async def main() -> list[AgentMessage]:
        agent, sent = make_agent(tmp_path, kind="port")
        await agent.start()
        await agent.receive(bytes(frame))
        for _ in range(200):
            if stream(sent, PayloadType.HANDSHAKE_COMPLETE):
                break
            await asyncio.sleep(0.01)
        await agent.stop()
        return sent

    assert stream(asyncio.run(main()), PayloadType.HANDSHAKE_COMPLETE)

    # A longer header (HeaderLength 120): the payload starts 4 bytes later, as the agent reads it.
    plain = client_frame(PayloadType.OUTPUT, b"abc")
    longer = bytearray(plain[:framing.PAYLOAD_OFFSET] + b"\x00" * 4 + plain[framing.PAYLOAD_OFFSET:])
    longer[0:4] = (120).to_bytes(4, "big")
    assert framing.decode_as_agent(bytes(longer)).payload == b"abc"
    with pytest.raises(framing.FramingError, match="header length"):
        framing.decode(bytes(longer))
    bad = bytearray(plain)
    bad[40:48] = bytes(8)  # CreatedDate missing: the one thing besides length and type it checks
    with pytest.raises(framing.FramingError, match="CreatedDate"):
        framing.decode_as_agent(bytes(bad))


def test_agent_sends_1_kib_messages_a_millisecond_apart(tmp_path: Path) -> None:
    """Difference 4. amazon-ssm-agent port_mux.go / port_basic.go / shell.go: read
    mgsConfig.StreamDataPayloadSize (1024) bytes, send, time.Sleep(time.Millisecond). The sandbox used
    16 KiB messages with no pause, so every figure measured against it was 7-100x what users get."""
    data = bytes(range(256)) * 40  # 10 KiB

    async def send(profile: str) -> tuple[list[AgentMessage], float]:
        agent, sent = make_agent(tmp_path, kind="port", profile=profile)
        started = time.monotonic()
        await agent.send_output(data)
        elapsed = time.monotonic() - started
        await agent.stop()
        return stream(sent, PayloadType.OUTPUT), elapsed

    faithful, elapsed = asyncio.run(send("faithful"))
    assert [len(m.payload) for m in faithful] == [1024] * 10
    assert b"".join(m.payload for m in faithful) == data
    assert elapsed >= 10 * 0.001  # a sleep is never shorter than asked
    assert agent_mod.DEFAULT_PROFILE == "faithful"
    fast, _ = asyncio.run(send("fast"))
    assert len(fast) == 1


def test_the_agent_pause_keeps_its_cadence_when_asyncio_wakes_late() -> None:
    """Difference 4, the pacing, on asyncio. amazon-ssm-agent port_mux.go transferDataToMgs: read, send,
    time.Sleep(time.Millisecond), i.e. a message every ~1.06 ms. asyncio's selector waits in whole
    milliseconds rounded up, so a sleep interrupted by an acknowledgement ended up to 1 ms late and the
    sandbox agent sent every ~1.7 ms (bench/channel: 0.61 MB/s one way, where the agent's pace gives
    ~0.95), slower still for a client that kept the endpoint busier. With the Pacer (a fake clock here)
    the due times keep the agent's period whatever our lateness, and never come closer than the pause."""
    pacer = agent_mod.Pacer(0.001)
    work = 0.0001  # our send: slower than the agent's
    now, due_times, sends = 0.0, [], []
    late = [0.0009, 0.0, 0.0003, 0.0009, 0.0, 0.0, 0.0009, 0.0005] * 50  # what the selector adds, cycling
    for extra in late:
        sends.append(now)
        now += work
        sleep = pacer.sleep_after_send(now)
        assert sleep >= 0
        due_times.append(now + sleep)
        now += sleep + extra
    gaps = [b - a for a, b in itertools.pairwise(due_times)]
    assert min(gaps) >= 0.001 - 1e-12  # never faster than the agent
    period = (sends[-1] - sends[0]) / (len(sends) - 1)
    assert period == pytest.approx(pacer.period, rel=0.05), period  # the agent's ~1.06 ms
    # Sleeping the pause after each send instead gives pause + work + the mean lateness:
    assert 0.001 + work + sum(late) / len(late) > 1.3 * pacer.period

    fresh = agent_mod.Pacer(0.001)
    assert fresh.sleep_after_send(5.0) == pytest.approx(0.001)  # the first sleep is the whole pause
    assert fresh.sleep_after_send(5.0015) == pytest.approx(pacer.period - 0.0005)  # back on the cadence
    assert fresh.sleep_after_send(5.0045) == 0.0  # late: the next one is made up at once ...
    assert fresh.sleep_after_send(9.0) == pytest.approx(0.001)  # ... but after a wait for data, the whole pause


def test_multiplexed_output_crosses_a_byte_pipe_not_a_frame_per_message(tmp_path: Path) -> None:
    """Difference 4, the pacing, in multiplexed sessions. amazon-ssm-agent port/port_mux.go: smux.Server writes whole
    frames into a unix socket (mgsConn) and transferDataToMgs reads StreamDataPayloadSize bytes from it
    whatever the frame boundaries, then sleeps 1 ms; handleDataTransfer's io.Copy reads the target 32 KiB
    at a time. The sandbox sent each smux frame as messages of its own, so a 1 KiB read (a 1032-byte
    frame) cost two messages and two pauses, one of them for 8 bytes: half of AWS's pace."""
    from ops.sandbox.agent import SocketPipe
    from ops.ssm import smux

    frames = b"".join(smux.frame(smux.CMD_PSH, 3, bytes([n]) * 1024) for n in range(10))  # 10 x 1032 bytes

    async def main() -> list[AgentMessage]:
        agent, sent = make_agent(tmp_path, kind="port")
        pipe = SocketPipe(agent)
        pipe.start()
        for i in range(0, len(frames), 1032):
            await pipe.write(frames[i:i + 1032])
        for _ in range(500):
            if sum(len(m.payload) for m in stream(sent, PayloadType.OUTPUT)) == len(frames):
                break
            await asyncio.sleep(0.005)
        pipe.stop()
        await agent.stop()
        return sent

    out = stream(asyncio.run(main()), PayloadType.OUTPUT)
    assert b"".join(m.payload for m in out) == frames
    sizes = [len(m.payload) for m in out]
    assert sizes == [1024] * 10 + [80], sizes  # full messages; the remainder once, at the end

    async def bounded() -> tuple[bool, int]:
        agent, _sent = make_agent(tmp_path, kind="port")
        pipe = SocketPipe(agent, limit=4096)  # not started: nobody reads the socket
        await pipe.write(b"x" * 4096)
        blocked = asyncio.ensure_future(pipe.write(b"y"))
        await asyncio.sleep(0.05)
        waiting = not blocked.done()
        blocked.cancel()
        await agent.stop()
        return waiting, len(pipe._buf)

    waiting, buffered = asyncio.run(bounded())
    assert waiting and buffered == 4096  # a full socket holds its writers back (smux's writes block)


def test_one_failed_send_does_not_stop_a_sessions_output(tmp_path: Path) -> None:
    """The pipe's read loop carries every stream of the session: a send that fails once (the websocket
    between two resumes) must not end it, or every later reply of the session is lost and its clients hang."""
    from ops.sandbox.agent import SocketPipe

    async def main() -> list[AgentMessage]:
        agent, sent = make_agent(tmp_path, kind="port", profile="fast")
        failures = [RuntimeError("websocket between resumes")]
        original = agent.send_output

        async def flaky(data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
            if failures:
                raise failures.pop()
            await original(data, payload_type)

        agent.send_output = flaky  # type: ignore[method-assign]
        pipe = SocketPipe(agent)
        pipe.start()
        await pipe.write(b"lost with the failed send")
        await asyncio.sleep(0.05)
        await pipe.write(b"the next reply")
        for _ in range(100):
            if stream(sent, PayloadType.OUTPUT):
                break
            await asyncio.sleep(0.01)
        pipe.stop()
        await agent.stop()
        return sent

    assert [m.payload for m in stream(asyncio.run(main()), PayloadType.OUTPUT)] == [b"the next reply"]


def test_native_client_payload_size_does_not_depend_on_the_host() -> None:
    """Difference 4, client side. session-manager-plugin src/config/config.go StreamDataPayloadSize = 1024,
    for every endpoint; ours used 16 KiB towards loopback, so the sandbox measured another client."""
    for url in ("ws://127.0.0.1:1/v1/data-channel/s", "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s"):
        assert PortSession(stream_url=url, token="t", session_id="s").payload_size == PAYLOAD_SIZE == 1024


@pytest.mark.parametrize(("host", "version", "refused"), [
    ("169.254.169.254", "3.3.1142.0", True),   # IMDS
    ("169.254.169.253", "3.3.1142.0", True),   # the Amazon DNS resolver
    ("fd00:ec2::254", "3.3.1142.0", True),
    ("127.0.0.1", "3.3.1142.0", False),        # loopback: refused only from 3.3.4851.0 on
    ("127.0.0.1", "3.3.4851.0", True),
    ("localhost", "3.3.4851.0", True),
    ("169.254.170.2", "3.3.1142.0", False),    # the ECS credential endpoint, likewise
    ("169.254.170.2", "3.3.4851.0", True),
    ("169.254.170.23", "3.3.4851.0", True),    # EKS Pod Identity
    ("db.internal", "3.3.4851.0", False),      # an emulated VPC host: what it stands for, not 127.0.0.1
    ("", "3.3.4851.0", False),                 # no host: the relay itself (AWS-StartPortForwardingSession)
])
def test_forwarding_deny_list(tmp_path: Path, host: str, version: str, refused: bool) -> None:
    """Difference 6. amazon-ssm-agent agent/session/plugins/port/port.go validateParameters with
    appconfig DefaultDeniedPortForwardingRemoteIPs: 'Forwarding to IP address <host> is forbidden.'"""
    (tmp_path / RELAY_HOSTS_FILE).write_text(json.dumps({"db.internal:5432": "127.0.0.1:5432"}))
    error = forbidden_host(tmp_path, host, version)
    assert error == (f"Forwarding to IP address {host} is forbidden." if refused else "")


@pytest.mark.parametrize(("host", "refused"), [
    ("10.40.0.0", True), ("10.40.0.1", True), ("10.40.0.2", True),  # network, VPC router, VPC DNS resolver
    ("10.40.0.3", True), ("10.40.255.255", True),                   # reserved, broadcast
    ("10.40.0.4", False), ("10.41.0.2", False),
])
def test_forwarding_deny_list_includes_the_vpc_resolver(tmp_path: Path, host: str, refused: bool) -> None:
    """Difference 6, the VPC part. port.go dnsRoutingAddress/calculateAddress: the first four and the last
    address of the instance's VPC CIDR blocks (the VPC DNS resolver is base + 2) are denied too."""
    error = forbidden_host(tmp_path, host, agent_mod.SANDBOX_AGENT_VERSION, ("10.40.0.0/16",))
    assert bool(error) is refused


def test_refused_host_ends_the_session_after_the_handshake(tmp_path: Path) -> None:
    """Difference 6: the port plugin validates after the handshake and the session ends with the error."""
    finished: list[str] = []

    async def main() -> list[AgentMessage]:
        sent: list[AgentMessage] = []

        async def send_raw(frame: bytes) -> None:
            sent.append(framing.decode(frame))

        async def on_finished(output: str) -> None:
            finished.append(output)

        spec = SessionSpec(session_id="s-2", kind="port", target="i-0123",
                           properties={"type": "LocalPortForwarding", "portNumber": "80", "host": "169.254.169.254"})
        agent = AgentConnection(spec=spec, send_raw=send_raw, state_dir=tmp_path, on_finished=on_finished)
        agent.channel.drain = _no_drain  # type: ignore[method-assign]
        await agent.start()
        response = json.dumps({"ClientVersion": "1.2.650.0", "ProcessedClientActions": []}).encode()
        await agent.receive(client_frame(PayloadType.HANDSHAKE_RESPONSE, response))
        for _ in range(300):
            if finished:
                break
            await asyncio.sleep(0.01)
        await agent.stop()
        return sent

    sent = asyncio.run(main())
    assert finished == ["Forwarding to IP address 169.254.169.254 is forbidden."]
    closed = [m for m in sent if m.message_type == framing.CHANNEL_CLOSED]
    assert json.loads(closed[0].payload)["Output"] == finished[0]


async def _no_drain(timeout: float = 0.0) -> bool:
    return True


def test_sandbox_master_password_looks_like_an_rds_one() -> None:
    """Difference 8. RDS-managed master passwords use printable ASCII except '/', '@', '"' and space, so
    punctuation such as '%' reaches every URL, .pgpass and libpq string we build; the sandbox's used
    to be URL-safe and hid quoting bugs."""
    from ops.sandbox.manager import _generate_password

    for _ in range(20):
        password = _generate_password()
        assert len(password) == 41
        assert not set(password) & set('/@" ')
        assert set(password) <= set(string.printable) - set(string.whitespace)
        assert "%" in password and "%25" in quote(password, safe="")
        assert set(password) & set(string.punctuation) - {"%"}
