"""Sandbox stand-in for the SSM agent (plus the service's relay role) on one data-channel websocket.

Speaks the agent's side of the protocol as amazon-ssm-agent does (our code, its behaviour): the
handshake request (agent version + session type), port sessions in basic mode (one TCP connection,
re-dialled after DisconnectToPort) or smux mode (one TCP connection per smux stream), and pty shell
sessions for ECS Exec (output, Size messages, exit code, channel_closed). Sandbox only: the
"remote network" is `<state-dir>/relay_hosts.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.facts import (
    LOCAL_PORT_DOCUMENT,
    MUX_AFTER_AGENT,
    MUX_CLIENT_VERSION,
    NO_KEEPALIVE_AFTER_AGENT,
    NO_KEEPALIVE_CLIENT_AFTER,
    PORT_DOCUMENT,
    RELAY_HOSTS_FILE,
    SANDBOX_AGENT_VERSION,
    SANDBOX_SECRET_ENV,
)
from ops.sandbox import procs
from ops.ssm import framing, handshake, smux
from ops.ssm.channel import Channel
from ops.ssm.core import State
from ops.ssm.crypto import EncryptionError, SessionCipher, b64, encryption_context, unb64
from ops.ssm.framing import AgentMessage, Flag, PayloadType

# Agents from this version on also refuse loopback and the ECS/EKS credential endpoints.
LOOPBACK_DENIED_FROM_AGENT = "3.3.4851.0"
# appconfig/constants.go DefaultDeniedPortForwardingRemoteIPs: IMDS, the Amazon DNS and time servers.
DENIED_REMOTE_IPS = ("169.254.169.254", "fd00:ec2::254", "169.254.169.253", "fd00:ec2::253", "169.254.169.123",
                     "fd00:ec2::123", "169.254.169.250", "169.254.169.251", "fd00:ec2::240")
# The container credential endpoints of ECS (169.254.170.2) and EKS Pod Identity (169.254.170.23).
DENIED_CREDENTIAL_IPS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23")


@dataclass(frozen=True)
class AgentProfile:
    """How fast the sandbox agent moves bytes.

    `faithful` (the default) is what amazon-ssm-agent does: its port and shell plugins read
    StreamDataPayloadSize = 1024 bytes at a time and sleep 1 ms after each message they send
    (agent/session/plugins/port/port_mux.go, port_basic.go, shell/shell.go), which caps one session
    near 1 MB/s. `fast` (16 KiB, no pause) exists only for tests that move so much data that the real
    pace would make them minutes long; each such test says so.
    """

    name: str
    payload_size: int
    pause: float


class Pacer:
    """The agent's `time.Sleep(time.Millisecond)` after each message, kept on the agent's cadence (sans I/O:
    the caller passes the clock and does the sleeping).

    The agent's loop (port_mux.go transferDataToMgs) is read, send, sleep 1 ms: one message every
    ~1.06 ms (Go's sleep overshoots by the kernel's 50 us timer slack; its read and send take
    microseconds). asyncio cannot sleep like that: its selector waits in whole milliseconds rounded up,
    so a sleep that other work interrupts (an acknowledgement arriving) ended up to 1 ms late, and our
    send takes ~0.1 ms of Python, more the busier the endpoint. The sandbox agent sent a message every
    ~1.7 ms, a third under AWS's pace, and slower for a client that kept the endpoint busier. Due times
    here advance by the agent's period whatever our own costs, never closer together than `pause`. A
    sleep shorter than a millisecond lasts a millisecond on asyncio, so a late message is made up by the
    next ones (at most MAX_LAG periods behind: a few messages back to back, never a faster average);
    after a wait for data, or a longer stall, the next sleep is the whole pause again."""

    GO_SLEEP_EXCESS = 0.06  # of the pause: time.Sleep(1 ms) lasts ~1.06 ms on Linux
    MAX_LAG = 4  # periods

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.period = pause * (1 + self.GO_SLEEP_EXCESS)
        self._due: float | None = None

    def sleep_after_send(self, now: float) -> float:
        """Seconds to sleep after a message whose send ended at `now`."""
        if self._due is None or now - self._due > self.MAX_LAG * self.period:
            self._due = now + self.pause
        else:
            self._due += self.period
        return max(0.0, self._due - now)


PROFILES = {"faithful": AgentProfile("faithful", 1024, 0.001), "fast": AgentProfile("fast", 16 * 1024, 0.0)}
DEFAULT_PROFILE = "faithful"
DEFAULT_AGENT_PAYLOAD = PROFILES[DEFAULT_PROFILE].payload_size
PORT_DOCUMENTS = {
    LOCAL_PORT_DOCUMENT: "LocalPortForwarding",
    PORT_DOCUMENT: "LocalPortForwarding",
}


@dataclass
class LossConfig:
    """Fault injection for tests: applies to stream-data frames in both directions."""

    drop_every: int = 0
    reorder_every: int = 0
    counter: int = 0
    dropped: int = 0
    reordered: int = 0
    _dropped_seqs: set[tuple[str, int]] = field(default_factory=set)

    def decide(self, frame: bytes) -> str:
        """'drop', 'hold' (reorder with the next frame) or 'pass'. Each message is dropped at most once."""
        if len(frame) < framing.PAYLOAD_OFFSET:
            return "pass"
        mtype = frame[4:36].rstrip(b" ").decode(errors="replace")
        if mtype not in framing.STREAM_TYPES:
            return "pass"
        self.counter += 1
        seq = struct.unpack_from("!q", frame, 48)[0]
        if self.drop_every and self.counter % self.drop_every == 0 and (mtype, seq) not in self._dropped_seqs:
            self._dropped_seqs.add((mtype, seq))
            self.dropped += 1
            return "drop"
        if self.reorder_every and self.counter % self.reorder_every == 0:
            self.reordered += 1
            return "hold"
        return "pass"


@dataclass
class SessionSpec:
    session_id: str
    kind: str  # "port" or "shell"
    properties: dict[str, Any]
    command: list[str] = field(default_factory=list)
    cwd: str | None = None
    target: str = ""
    kms_key_id: str = ""
    vpc_cidrs: tuple[str, ...] = ()  # the relay's VPC: its first four and last addresses are denied


def vpc_reserved(cidrs: tuple[str, ...]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """port.go calculateAddress: the first four addresses (network, router, DNS, reserved) and the last
    (broadcast) of each VPC CIDR block the instance metadata names."""
    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        out |= {net.network_address + i for i in range(4)} | {net.broadcast_address}
    return out


def forbidden_host(state_dir: Path, host: str, agent_version: str, vpc_cidrs: tuple[str, ...] = ()) -> str:
    """The agent's deny-list check (agent/session/plugins/port/port.go validateParameters): '' when allowed,
    else the error the session ends with. Only a remote host is checked; no host means the relay itself.

    The emulated remote network (relay_hosts.json) stands for VPC addresses, so its names are checked by
    what they stand for, not by the loopback address the sandbox maps them to.
    """
    if not host or _mapped(state_dir, host):
        return ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return ""  # unresolvable: the agent lets the dial fail later
    denied = {ipaddress.ip_address(a) for a in DENIED_REMOTE_IPS} | vpc_reserved(vpc_cidrs)
    newer = not framing.version_greater(LOOPBACK_DENIED_FROM_AGENT, agent_version)
    if newer:
        denied |= {ipaddress.ip_address(a) for a in DENIED_CREDENTIAL_IPS}
    for text in addresses:
        try:
            addr = ipaddress.ip_address(str(text).split("%", 1)[0])
        except ValueError:
            continue
        if addr in denied or (newer and addr.is_loopback):
            return f"Forwarding to IP address {host} is forbidden."
    return ""


def _mapped(state_dir: Path, host: str) -> bool:
    mapping = procs.read_json(state_dir / RELAY_HOSTS_FILE) or {}
    return any(str(key).rpartition(":")[0] == host for key in mapping)


def resolve_target(state_dir: Path, host: str, port: str) -> tuple[str, int]:
    """The relay's view of `host:port`: relay_hosts.json maps emulated names to loopback addresses."""
    key = f"{host or 'localhost'}:{port}"
    target = (procs.read_json(state_dir / RELAY_HOSTS_FILE) or {}).get(key)
    if isinstance(target, str) and ":" in target:
        thost, _, tport = target.rpartition(":")
        return thost, int(tport)
    if not host or host in ("localhost", "127.0.0.1"):
        return "127.0.0.1", int(port)
    raise OSError(f"{key} is not reachable from the sandbox relay (not in relay_hosts.json)")


class AgentConnection:
    """One websocket's worth of agent: channel, handshake, then the port or shell plugin."""

    def __init__(self, *, spec: SessionSpec, send_raw: Callable[[bytes], Awaitable[None]], state_dir: Path,
                 agent_version: str = SANDBOX_AGENT_VERSION, profile: AgentProfile = PROFILES[DEFAULT_PROFILE],
                 loss: LossConfig | None = None,
                 on_finished: Callable[[str], Awaitable[None]] | None = None,
                 kms_decrypt: Callable[[bytes, dict[str, str]], bytes] | None = None) -> None:
        self.spec = spec
        self._send_raw: Callable[[bytes], Awaitable[None]] | None = send_raw
        self.state_dir = state_dir
        self.agent_version = agent_version
        self.profile = profile
        self.payload_size = profile.payload_size
        # One write pump per session, as in the agent: every stream shares the pace.
        self._pump_lock = asyncio.Lock()
        self._pacer = Pacer(profile.pause)
        self.loss = loss or LossConfig()
        self._on_finished = on_finished
        self.channel = Channel(send_frame=self._send_frame, outgoing_type=framing.OUTPUT_STREAM_DATA,
                               on_message=self._on_message, decode=framing.decode_as_agent)
        self.client_version = ""
        self._handshake_ok = asyncio.Event()
        self._held: bytes | None = None
        self.plugin: _Plugin | None = None
        self.finished = False
        self.received = 0
        self._finishing: asyncio.Future[None] | None = None
        self.terminate_requested = False
        self._kms_decrypt = kms_decrypt
        self._kms_challenge = b64(os.urandom(16))
        self._enc_challenge = b""
        self.cipher: SessionCipher | None = None

    # ---- the client's websocket comes and goes; the agent's side of the session stays ----
    def attach(self, send_raw: Callable[[bytes], Awaitable[None]]) -> None:
        """A client (re)connected (ResumeSession): frames go to its websocket from now on."""
        self._send_raw = send_raw

    def detach(self) -> None:
        """The client's websocket is gone. As with AWS, the agent's data channel, its sequence numbers and
        its TCP connections stay; what it sends meanwhile is resent when the client resumes."""
        self._send_raw = None

    async def _emit(self, frame: bytes) -> None:
        send = self._send_raw
        if send is None:
            return  # unacknowledged: the resend loop delivers it after a resume
        with contextlib.suppress(ConnectionError, RuntimeError):
            await send(frame)

    # ---- frames with fault injection ----
    async def _send_frame(self, frame: bytes) -> None:
        verdict = self.loss.decide(frame)
        if verdict == "drop":
            return
        if verdict == "hold" and self._held is None:
            self._held = frame
            return
        await self._emit(frame)
        held, self._held = self._held, None
        if held is not None:
            await self._emit(held)

    async def receive(self, frame: bytes) -> None:
        verdict = self.loss.decide(frame)
        if verdict == "drop":
            return
        await self.channel.receive(frame)

    # ---- lifecycle ----
    @property
    def encryption_enabled(self) -> bool:
        """sessionplugin.go isEncryptionEnabled: a KMS key is set and the plugin is not Port."""
        return bool(self.spec.kms_key_id) and self.spec.kind != "port"

    @property
    def requires_handshake(self) -> bool:
        """The port plugin always shakes hands; InteractiveCommands (ECS Exec) only to agree on encryption."""
        return self.spec.kind == "port" or self.encryption_enabled

    async def start(self) -> None:
        self.channel.start()
        if not self.requires_handshake:
            # dataChannel.SkipHandshake: the shell starts at once; its first output tells the client.
            self.plugin = self._make_plugin()
            self._handshake_ok.set()
            await self.plugin.start()
            return
        if self.spec.kind == "port":
            stype = "Port"
            props = self.spec.properties
        else:
            stype = "InteractiveCommands"
            props = {}
        actions = [handshake.Action(handshake.SESSION_TYPE, {"SessionType": stype, "Properties": props})]
        if self.encryption_enabled:
            actions.append(handshake.Action(handshake.KMS_ENCRYPTION, {"KMSKeyId": self.spec.kms_key_id,
                                                                       "Challenge": self._kms_challenge}))
        self._handshake_started = time.monotonic()
        await self.channel.send(PayloadType.HANDSHAKE_REQUEST,
                                handshake.Request(self.agent_version, tuple(actions)).payload())

    async def stop(self) -> None:
        await self.channel.stop()
        if self.plugin is not None:
            await self.plugin.stop()

    async def finish(self, output: str = "") -> None:
        """The session is over on the agent's side: flush, tell the client, report upwards."""
        if self.finished:
            return
        self.finished = True
        await self.channel.drain(timeout=3)
        with contextlib.suppress(Exception):
            await self._emit(framing.encode(framing.channel_closed(session_id=self.spec.session_id,
                                                                       output=output)))
        if self._on_finished is not None:
            await self._on_finished(output)

    async def send_output(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        size, pacer = self.payload_size, self._pacer
        async with self._pump_lock:
            for i in range(0, len(data), size):
                chunk = data[i:i + size]
                if self.cipher is not None:
                    chunk = self.cipher.encrypt(chunk)
                await self.channel.send(payload_type, chunk)
                if pacer.pause:
                    await asyncio.sleep(pacer.sleep_after_send(time.monotonic()))

    async def _on_message(self, msg: AgentMessage) -> None:
        self.received += len(msg.payload)
        if msg.payload_type == PayloadType.HANDSHAKE_RESPONSE:
            response = handshake.Response.parse(msg.payload)
            self.client_version = response.client_version
            if self.encryption_enabled:
                error = await self._finalize_kms(response)
                if error:
                    self._finishing = asyncio.ensure_future(self.finish(error))
                    return
                self._enc_challenge = os.urandom(64)
                assert self.cipher is not None
                challenge = {"Challenge": b64(self.cipher.encrypt(self._enc_challenge))}
                await self.channel.send(PayloadType.ENC_CHALLENGE_REQUEST, json.dumps(challenge).encode())
                return
            await self._complete_handshake()
            return
        if msg.payload_type == PayloadType.ENC_CHALLENGE_RESPONSE and self.cipher is not None and self.plugin is None:
            try:
                answer = self.cipher.decrypt(unb64(framing.parse_json(msg).get("Challenge")))
            except EncryptionError:
                answer = b""
            if answer != self._enc_challenge:
                self._finishing = asyncio.ensure_future(self.finish("Encryption challenge does not match!"))
                return
            await self._complete_handshake("This session is encrypted using AWS KMS.")
            return
        if self.cipher is not None and msg.payload_type == PayloadType.OUTPUT:
            msg.payload = self.cipher.decrypt(msg.payload)
        if self.plugin is None:
            return
        if msg.payload_type == PayloadType.FLAG:
            flag = framing.parse_flag(msg.payload)
            if flag == Flag.TERMINATE_SESSION:
                self.terminate_requested = True
                await self.plugin.stop()
                # Not inline: finish() waits for acks, which this (receiving) coroutine has to process.
                self._finishing = asyncio.ensure_future(self.finish(""))
                return
        await self.plugin.handle(msg)

    async def _complete_handshake(self, customer_message: str = "") -> None:
        elapsed_ns = int((time.monotonic() - self._handshake_started) * 1e9)
        await self.channel.send(PayloadType.HANDSHAKE_COMPLETE,
                                handshake.Complete(elapsed_ns, customer_message).payload())
        if self.spec.kind == "port":
            host = str(self.spec.properties.get("host", ""))
            refused = await asyncio.to_thread(forbidden_host, self.state_dir, host, self.agent_version,
                                              self.spec.vpc_cidrs)
            if refused:
                # The port plugin validates its parameters after the handshake and fails the session.
                self._finishing = asyncio.ensure_future(self.finish(refused))
                return
        self.plugin = self._make_plugin()
        await self.plugin.start()
        self._handshake_ok.set()

    async def _finalize_kms(self, response: handshake.Response) -> str:
        """Set up the cipher from the client's KMSEncryption result; an error text ends the session."""
        action = response.find(handshake.KMS_ENCRYPTION)
        if action is None or action.status != handshake.ActionStatus.SUCCESS:
            return f"KMSEncryption failed on client: {action.error if action else 'not processed'}"
        result = action.result if isinstance(action.result, dict) else {}
        if self._kms_decrypt is None:
            return "sandbox agent has no KMS access"
        context = encryption_context(session_id=self.spec.session_id, target_id=self.spec.target,
                                     challenge=self._kms_challenge if result.get("ChallengeAcknowledgement") else None)
        try:
            blob = unb64(result.get("KMSCipherTextKey"))
            key = await asyncio.to_thread(self._kms_decrypt, blob, context)
            self.cipher = SessionCipher(key, agent_side=True)
        except Exception as exc:
            return f"Fetching data key failed: {exc}"
        return ""

    def _make_plugin(self) -> _Plugin:
        if self.spec.kind == "shell":
            return ShellPlugin(self)
        client_mux = framing.version_tuple(self.client_version) >= framing.version_tuple(MUX_CLIENT_VERSION)
        agent_mux = framing.version_greater(self.agent_version, MUX_AFTER_AGENT)
        local = self.spec.properties.get("type") == "LocalPortForwarding"
        if local and client_mux and agent_mux:
            keepalive = not (framing.version_greater(self.client_version, NO_KEEPALIVE_CLIENT_AFTER)
                             and framing.version_greater(self.agent_version, NO_KEEPALIVE_AFTER_AGENT))
            return MuxPortPlugin(self, keepalive=keepalive)
        return BasicPortPlugin(self)


class _Plugin:
    def __init__(self, agent: AgentConnection) -> None:
        self.agent = agent
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self) -> None:
        return None

    async def handle(self, msg: AgentMessage) -> None:
        return None

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def target(self) -> tuple[str, int]:
        props = self.agent.spec.properties
        return resolve_target(self.agent.state_dir, str(props.get("host", "")), str(props.get("portNumber", "")))


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 20), 10)


class BasicPortPlugin(_Plugin):
    """One TCP connection at a time; DisconnectToPort closes it, the next data re-dials (agent behaviour)."""

    def __init__(self, agent: AgentConnection) -> None:
        super().__init__(agent)
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        try:
            await self._dial()
        except OSError as exc:
            await self.agent.finish(f"Unable to connect to specified port: {exc}")

    async def _dial(self) -> None:
        host, port = self.target()
        reader, writer = await _open(host, port)
        self.writer = writer
        self.spawn(self._pump(reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(self.agent.payload_size):
                await self.agent.send_output(data)
        writer.close()
        if self.writer is writer:
            self.writer = None

    async def handle(self, msg: AgentMessage) -> None:
        if msg.payload_type == PayloadType.OUTPUT:
            if self.writer is None:
                try:
                    await self._dial()
                except OSError:
                    await self.agent.channel.send(PayloadType.FLAG, framing.flag_payload(Flag.CONNECT_TO_PORT_ERROR))
                    return
            assert self.writer is not None
            self.writer.write(msg.payload)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
        elif msg.payload_type == PayloadType.FLAG and framing.parse_flag(msg.payload) == Flag.DISCONNECT_TO_PORT:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        await super().stop()


class SocketPipe:
    """The unix socket between the agent's smux server and its read loop (port_mux.go: smux.Server writes
    whole frames into `mgsConn`; transferDataToMgs reads StreamDataPayloadSize bytes from it whatever the
    frame boundaries, sends them as one message and sleeps 1 ms). Bytes cross it, not frames: a 1 KiB read
    from the target becomes a 1032-byte smux frame, and the agent sends 1024 bytes of it now and 8 with
    the next, never an 8-byte message with a pause of its own. Writers wait while `limit` bytes are
    unread, as smux's writes block on a full socket buffer."""

    def __init__(self, agent: AgentConnection, *, limit: int = 256 * 1024) -> None:
        self.agent = agent
        self.limit = limit
        self._buf = bytearray()
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writers = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._read_loop())

    async def write(self, data: bytes) -> None:
        # Writers take turns in the order they came (the lock is FIFO): a stream's frame waits behind at most
        # one frame of each other stream, never behind a bulk stream that keeps refilling the socket.
        async with self._writers:
            while len(self._buf) >= self.limit:
                self._room.clear()
                await self._room.wait()
            self._buf += data
            self._data.set()

    async def _read_loop(self) -> None:
        size = self.agent.payload_size
        while True:
            if not self._buf:
                self._data.clear()
                await self._data.wait()
                continue
            chunk = bytes(self._buf[:size])
            del self._buf[:size]
            if len(self._buf) < self.limit:
                self._room.set()
            try:
                await self.agent.send_output(chunk)
            except Exception:
                channel = self.agent.channel
                if channel.failed is not None or channel.core.state is State.CLOSED:
                    return  # the session is over: nothing more leaves it
                # Anything else failed after the channel took the message: it is in the window and goes out
                # with the resends. One session's output must not stop for good on one failed send.

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class MuxPortPlugin(_Plugin):
    """smux server over the data channel: each client stream is one TCP connection to the target."""

    def __init__(self, agent: AgentConnection, *, keepalive: bool) -> None:
        super().__init__(agent)
        self.pipe = SocketPipe(agent)
        self.mux = smux.SmuxSession(send=self.pipe.write, client=False, keepalive=keepalive,
                                    on_accept=self._accept)
        self.connections = 0

    async def start(self) -> None:
        self.pipe.start()
        self.mux.start()

    async def handle(self, msg: AgentMessage) -> None:
        if msg.payload_type == PayloadType.OUTPUT:
            await self.mux.feed(msg.payload)

    async def _accept(self, stream: smux.Stream) -> None:
        try:
            host, port = self.target()
            reader, writer = await _open(host, port)
        except OSError:
            await self.agent.channel.send(PayloadType.FLAG, framing.flag_payload(Flag.CONNECT_TO_PORT_ERROR))
            await stream.close()
            return
        self.connections += 1

        # io.Copy(stream, conn) in handleDataTransfer: reads of up to 32 KiB, one smux frame each.
        down = asyncio.ensure_future(stream.copy_from(reader, smux.MAX_FRAME_SIZE))
        session_closing = False
        try:
            await stream.copy_to(writer)
        except asyncio.CancelledError:
            session_closing = True  # the whole session ends: drop the pair now, drain nothing
            raise
        finally:
            stream.discard()
            # Like io.Copy + Close on both sides in the agent: one direction ending ends the pair.
            with contextlib.suppress(Exception):
                writer.write_eof()
            if not session_closing:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(down), 30)
            down.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.close(), 1)

    async def stop(self) -> None:
        await self.mux.aclose()
        self.pipe.stop()
        await super().stop()


class ShellPlugin(_Plugin):
    """A local process on a pty stands in for the container's shell."""

    def __init__(self, agent: AgentConnection) -> None:
        super().__init__(agent)
        self.proc: subprocess.Popen[bytes] | None = None
        self.master: int | None = None
        self._out: asyncio.Queue[bytes] = asyncio.Queue()

    async def start(self) -> None:
        master, slave = os.openpty()
        env = {**os.environ, "TERM": os.environ.get("TERM", "xterm-256color")}
        env.pop(SANDBOX_SECRET_ENV, None)
        try:
            self.proc = subprocess.Popen(
                self.agent.spec.command or ["/bin/sh"], stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, env=env, cwd=self.agent.spec.cwd, close_fds=True,
                preexec_fn=_controlling_tty(slave),
            )
        except OSError as exc:
            os.close(master)
            os.close(slave)
            await self.agent.send_output(f"exec failed: {exc}\r\n".encode())
            await self.agent.send_output(b"EXIT_CODE: 127", PayloadType.EXIT_CODE)
            await self.agent.finish(str(exc))
            return
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        self.spawn(self._pump())

    def _readable(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every slave end is closed, the process is gone
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self._out.put_nowait(data)

    async def _pump(self) -> None:
        while data := await self._out.get():
            await self.agent.send_output(data)
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait)
        if code < 0:
            code = 128 - code
        # The real agent reports `EXIT_CODE: n` with payload type ExitCode for NonInteractiveCommands;
        # the sandbox sends it for every shell so the client can return the remote status.
        await self.agent.send_output(f"EXIT_CODE: {code}".encode(), PayloadType.EXIT_CODE)
        self._close_master()
        await self.agent.finish("")

    def _close_master(self) -> None:
        if self.master is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master)
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None

    async def handle(self, msg: AgentMessage) -> None:
        if self.master is None:
            return
        if msg.payload_type == PayloadType.OUTPUT:
            data = msg.payload
            while data:
                try:
                    data = data[os.write(self.master, data):]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except OSError:
                    return
        elif msg.payload_type == PayloadType.SIZE:
            size = framing.parse_json(msg)
            cols, rows = int(size.get("cols", 80)), int(size.get("rows", 24))
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGHUP)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.proc.wait, 2)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
        self._close_master()
        await super().stop()


def _controlling_tty(slave: int) -> Callable[[], None]:
    def setup() -> None:
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    return setup


def shell_command(command: str) -> list[str]:
    return shlex.split(command) or ["/bin/sh"]
