"""Native Session Manager client: port forwarding (basic and smux modes) and interactive shells.

The websocket side lives here; the sequence/ack/resend machinery is `ops.ssm.channel`, the frame
codec `ops.ssm.framing`, the multiplexer `ops.ssm.smux`. Reconnection (ResumeSession) is the
caller's job: `wait_closed()` raises `ChannelClosed(dropped=True)` when the websocket drops, and the
session then stays as it was (data channel state, smux streams, local connections) until the caller
either `resume()`s it on the websocket ResumeSession returns, or `close()`s it. What is sent meanwhile
waits in the data channel's window and is resent after the resume, as the plugin does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import ssl
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from ops.facts import CLIENT_VERSION, MUX_AFTER_AGENT, NO_KEEPALIVE_AFTER_AGENT, TERMINATE_FLAG_AFTER_AGENT
from ops.ssm import framing, handshake, smux
from ops.ssm.channel import Channel, ChannelError
from ops.ssm.crypto import EncryptionError, SessionCipher, b64, encryption_context, unb64
from ops.ssm.errors import ChannelClosed, EncryptionRequired, KmsRefused, SessionError, WrongSessionType
from ops.ssm.framing import AgentMessage, Flag, PayloadType

# CLIENT_VERSION (ops.facts) is the plugin protocol level we implement; the agent picks smux for clients
# >= 1.1.70 and disables the smux keep-alive for clients > 1.2.331.0, so announcing a recent version does both.
# The plugin cuts stream payloads at 1 KiB (config.StreamDataPayloadSize). The frame format carries any
# size, but whether the AWS service relays bigger frames is undocumented, so we keep the plugin's size
# wherever the endpoint is: a size chosen by host name would make the sandbox measure another client.
PAYLOAD_SIZE = 1024
HANDSHAKE_TIMEOUT = 30.0
_HANDSHAKE_TYPES = frozenset({PayloadType.HANDSHAKE_REQUEST, PayloadType.HANDSHAKE_COMPLETE,
                              PayloadType.ENC_CHALLENGE_REQUEST})
_ENCRYPTED_FROM_AGENT = frozenset({PayloadType.OUTPUT, PayloadType.STDERR, PayloadType.EXIT_CODE})
SESSION_TYPES_SHELL = frozenset({"Standard_Stream", "InteractiveCommands", "NonInteractiveCommands"})


@functools.lru_cache(maxsize=8)
def _tls_context(ca_file: str, _mtime: float) -> ssl.SSLContext:
    """The websocket's TLS settings, made once: loading the system's CA bundle costs tens of milliseconds,
    which every session of a pool and every resume paid. Keyed on the extra CA's mtime, so a rebuilt sandbox
    CA is read again."""
    tls = ssl.create_default_context()
    if ca_file:
        tls.load_verify_locations(cafile=ca_file)
    return tls


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


class _Session:
    """Websocket + open-data-channel + handshake; subclasses consume the stream messages."""

    def __init__(self, *, stream_url: str, token: str, session_id: str, client_id: str | None = None,
                 on_event: Callable[[str], None] | None = None, payload_size: int | None = None,
                 target: str = "", kms_client: Any = None, ca_file: str = "") -> None:
        self.stream_url = stream_url
        # An extra CA to trust for the wss:// data channel (the sandbox's); AWS needs none.
        self.ca_file = ca_file
        self.target = target
        self._kms = kms_client
        self.cipher: SessionCipher | None = None
        self.session_id = session_id
        self._token = token
        self.client_id = client_id or str(uuid.uuid4())
        self._on_event = on_event or (lambda _msg: None)
        self.payload_size = payload_size or PAYLOAD_SIZE
        self.agent_version = ""
        self.session_type = ""
        self.session_properties: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self.channel: Channel | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._handshake_done = asyncio.Event()
        self._handshake_seen = False
        self._closed = asyncio.Event()
        self._link_lost = asyncio.Event()  # the websocket is gone; the session may still be resumed
        self._closing = False
        self.dropped = False
        self.close_output = ""
        self._handshake_error: SessionError | None = None
        # Stream payload bytes each way (smux framing included): what `invoke tunnels` and progress show.
        self.bytes_sent = 0
        self.bytes_received = 0
        # One writer at a time: a write longer than a message goes out as several, and with the window full
        # or the websocket draining another writer would slip its messages between them (smux frames of
        # two streams interleaved: the agent then reads garbage). smux's own sendLoop writes whole frames.
        self._output_lock = asyncio.Lock()

    # ---- lifecycle ----
    async def _connect(self) -> None:
        """Open the websocket and authenticate to the stream (first connection and every resume)."""
        try:
            options: dict[str, Any] = {}
            if self.stream_url.startswith("wss://"):
                options["ssl"] = _tls_context(self.ca_file, _mtime(self.ca_file))
            ws = await connect(self.stream_url, max_size=None, compression=None, ping_interval=30,
                               ping_timeout=30, open_timeout=15, write_limit=1 << 20, **options)
            await ws.send(framing.open_data_channel(token=self._token, client_id=self.client_id,
                                                    client_version=CLIENT_VERSION))
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            raise ChannelClosed(f"cannot open the data channel websocket: {exc}", dropped=True) from None
        self._ws = ws
        self.dropped = False
        self._link_lost.clear()
        self._reader_task = asyncio.get_running_loop().create_task(self._reader(ws))

    async def start(self) -> None:
        self.channel = Channel(send_frame=self._send_frame, outgoing_type=framing.INPUT_STREAM_DATA,
                               on_message=self._on_stream, on_closed=self._on_channel_closed,
                               on_failed=self._on_channel_failed)
        await self._connect()
        self.channel.start()
        waiter = asyncio.ensure_future(self._handshake_done.wait())
        closer = asyncio.ensure_future(self._closed.wait())
        lost = asyncio.ensure_future(self._link_lost.wait())
        try:
            await asyncio.wait({waiter, closer, lost}, timeout=self._start_timeout(),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()
            lost.cancel()
        if self._link_lost.is_set() and not self._handshake_done.is_set():
            self._mark_closed()
        if self._handshake_error is not None:
            await self._shutdown()
            raise self._handshake_error
        if not self._handshake_done.is_set():
            if self._closed.is_set() and not self.dropped and self._may_end_before_start():
                return  # a command that printed nothing: its exit code and channel_closed came first
            await self._shutdown()
            if self._closed.is_set():
                raise ChannelClosed(f"data channel closed during the handshake: {self.close_output or 'no reason'}",
                                    dropped=self.dropped)
            raise ChannelClosed("no handshake from the agent within 30 s", dropped=True)
        self._on_event(f"session {self.session_id}: agent {self.agent_version}, {self.session_type}")
        await self._after_handshake()

    def _start_timeout(self) -> float | None:
        """How long start() waits for the agent to begin the session."""
        return HANDSHAKE_TIMEOUT

    def _may_end_before_start(self) -> bool:
        return False

    async def _after_handshake(self) -> None:
        return None

    async def wait_closed(self) -> None:
        """Returns when the session ended; raises ChannelClosed(dropped=True) when only its websocket did."""
        closer = asyncio.ensure_future(self._closed.wait())
        lost = asyncio.ensure_future(self._link_lost.wait())
        try:
            await asyncio.wait({closer, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            lost.cancel()
        if self.dropped and not self._closing:
            raise ChannelClosed(f"data channel websocket of {self.session_id} dropped", dropped=True)

    async def resume(self, *, stream_url: str, token: str) -> None:
        """Carry on with the same session over a new websocket (the answer of ResumeSession): streams,
        sequence numbers and unacknowledged messages are kept; raises ChannelClosed when it cannot."""
        if self._closed.is_set() or self.channel is None:
            raise ChannelClosed(f"session {self.session_id} is closed; it cannot be resumed", dropped=False)
        await self._drop_websocket()
        self.stream_url, self._token = stream_url, token
        await self._connect()
        self.channel.resend_now()

    async def _drop_websocket(self) -> None:
        ws, task = self._ws, self._reader_task
        self._ws = self._reader_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._closed.is_set() and self.channel is not None and self._handshake_done.is_set():
            if framing.version_greater(self.agent_version, TERMINATE_FLAG_AFTER_AGENT):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.channel.send(PayloadType.FLAG,
                                                             framing.flag_payload(Flag.TERMINATE_SESSION)), 2)
                    # The agent answers by closing the channel, often before acking the flag.
                    drained = asyncio.ensure_future(self.channel.drain(timeout=2))
                    closed = asyncio.ensure_future(self._closed.wait())
                    await asyncio.wait({drained, closed}, timeout=2, return_when=asyncio.FIRST_COMPLETED)
                    drained.cancel()
                    closed.cancel()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        if self.channel is not None:
            await self.channel.stop()
        await self._drop_websocket()
        self._mark_closed()

    def _mark_closed(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._on_closed()

    def _on_closed(self) -> None:
        return None

    # ---- transport ----
    async def _send_frame(self, frame: bytes) -> None:
        if self._closed.is_set():
            raise ChannelClosed("data channel not open", dropped=False)
        ws = self._ws
        if ws is None or self._link_lost.is_set():
            return  # between websockets: the frame waits unacknowledged and is resent after the resume
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.send(frame)

    async def _reader(self, ws: ClientConnection) -> None:
        assert self.channel is not None
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    continue
                try:
                    await self.channel.receive(raw)
                except framing.FramingError as exc:
                    self._on_event(str(exc))
                if self._closed.is_set():
                    break
        except websockets.exceptions.ConnectionClosed:
            pass
        except Exception as exc:
            self._on_event(f"data channel error: {exc!r}")
        if not self._closing and not self._closed.is_set():
            self.dropped = True
            self._link_lost.set()
            return
        self._mark_closed()

    def _on_channel_failed(self, exc: ChannelError) -> None:
        self._on_event(f"session {self.session_id}: {exc}")
        if not self._closing:
            self.dropped = True
        self._mark_closed()

    def _on_channel_closed(self, msg: AgentMessage) -> None:
        with contextlib.suppress(framing.FramingError):
            self.close_output = str(framing.parse_json(msg).get("Output", ""))
        self._on_event(f"session {self.session_id} closed by the agent"
                       + (f": {self.close_output}" if self.close_output else ""))
        self._mark_closed()

    # ---- stream messages ----
    async def _on_stream(self, msg: AgentMessage) -> None:
        ptype = msg.payload_type
        if not self._handshake_done.is_set() and not self._handshake_seen and ptype not in _HANDSHAKE_TYPES:
            # The agent skipped the handshake (shell without KMS): as the plugin's ProcessFirstMessage,
            # the first message starts the session, a shell one when it is output.
            if ptype == PayloadType.OUTPUT:
                self.session_type = "Standard_Stream"
            self._handshake_done.set()
        if ptype == PayloadType.HANDSHAKE_REQUEST:
            self._handshake_seen = True
            await self._handshake_request(msg)
        elif ptype == PayloadType.HANDSHAKE_COMPLETE:
            with contextlib.suppress(framing.FramingError):
                customer = handshake.Complete.parse(msg.payload).customer_message
                if customer:
                    self._on_event(customer)
            self._handshake_done.set()
        elif ptype == PayloadType.ENC_CHALLENGE_REQUEST:
            await self._encryption_challenge(msg)
        else:
            if self.cipher is not None and ptype in _ENCRYPTED_FROM_AGENT:
                msg.payload = self.cipher.decrypt(msg.payload)
            await self._deliver(msg)

    async def _encryption_challenge(self, msg: AgentMessage) -> None:
        assert self.channel is not None
        if self.cipher is None:
            raise EncryptionError("encryption challenge before a data key was agreed")
        challenge = self.cipher.decrypt(unb64(framing.parse_json(msg).get("Challenge")))
        response = {"Challenge": b64(self.cipher.encrypt(challenge))}
        await self.channel.send(PayloadType.ENC_CHALLENGE_RESPONSE, json.dumps(response).encode())

    async def _send_data(self, payload_type: int, data: bytes) -> None:
        assert self.channel is not None
        if payload_type == PayloadType.OUTPUT:
            self.bytes_sent += len(data)
            if self.cipher is not None:
                data = self.cipher.encrypt(data)
        await self.channel.send(payload_type, data)

    async def _kms_action(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._kms is None or not self.target:
            raise EncryptionRequired("this session requires KMS session encryption; the native client was given "
                                     "no KMS client or target id for it")
        challenge = params.get("Challenge") or None
        context = encryption_context(session_id=self.session_id, target_id=self.target, challenge=challenge)
        key_id = str(params.get("KMSKeyId", ""))

        def generate() -> dict[str, Any]:
            result: dict[str, Any] = self._kms.generate_data_key(KeyId=key_id, NumberOfBytes=64,
                                                                 EncryptionContext=context)
            return result

        try:
            data_key = await asyncio.to_thread(generate)
        except Exception as exc:
            raise KmsRefused(f"KMS refused a data key for session encryption ({key_id}): {exc}",
                             key_id=key_id) from None
        self.cipher = SessionCipher(data_key["Plaintext"])
        result: dict[str, Any] = {"KMSCipherTextKey": b64(data_key["CiphertextBlob"]), "KMSCipherTextHash": None}
        if challenge:
            result["ChallengeAcknowledgement"] = True
        return result

    async def _deliver(self, msg: AgentMessage) -> None:
        return None

    async def _handshake_request(self, msg: AgentMessage) -> None:
        assert self.channel is not None
        request = handshake.Request.parse(msg.payload)
        self.agent_version = request.agent_version
        processed: list[handshake.Processed] = []
        errors: list[str] = []
        for action in request.actions:
            atype, params = action.action_type, action.parameters
            if atype == handshake.SESSION_TYPE:
                self.session_type = str(params.get("SessionType", ""))
                properties = params.get("Properties")
                self.session_properties = properties if isinstance(properties, dict) else {}
                processed.append(handshake.Processed(atype, handshake.ActionStatus.SUCCESS))
            elif atype == handshake.KMS_ENCRYPTION:
                try:
                    result = await self._kms_action(params)
                except SessionError as exc:
                    self._handshake_error = exc
                    errors.append(exc.message)
                    processed.append(handshake.Processed(atype, handshake.ActionStatus.FAILED, error=exc.message))
                else:
                    processed.append(handshake.Processed(atype, handshake.ActionStatus.SUCCESS, result=result))
            else:
                error = f"Unsupported action {atype}"
                errors.append(error)
                processed.append(handshake.Processed(atype, handshake.ActionStatus.UNSUPPORTED, error=error))
        response = handshake.Response(CLIENT_VERSION, tuple(processed), tuple(errors))
        await self.channel.send(PayloadType.HANDSHAKE_RESPONSE, response.payload())
        if self._handshake_error is not None:
            self._mark_closed()

    async def _send_output(self, data: bytes) -> None:
        """`data` as OUTPUT messages of at most payload_size bytes, contiguous in the stream."""
        assert self.channel is not None
        size = self.payload_size
        async with self._output_lock:
            if len(data) <= size:
                await self._send_data(PayloadType.OUTPUT, data)
                return
            view = memoryview(data)
            for i in range(0, len(data), size):
                await self._send_data(PayloadType.OUTPUT, bytes(view[i:i + size]))


class PortSession(_Session):
    """A port-forwarding session: `handle_connection` forwards one local TCP connection."""

    multiplexed: bool = False

    def __init__(self, *, stream_url: str, token: str, session_id: str, client_id: str | None = None,
                 on_event: Callable[[str], None] | None = None, payload_size: int | None = None,
                 target: str = "", kms_client: Any = None, ca_file: str = "") -> None:
        super().__init__(stream_url=stream_url, token=token, session_id=session_id, client_id=client_id,
                         on_event=on_event, payload_size=payload_size, target=target, kms_client=kms_client,
                         ca_file=ca_file)
        self.multiplexed = False
        self._mux: smux.SmuxSession | None = None
        self._basic_lock = asyncio.Lock()
        self._basic_writer: asyncio.StreamWriter | None = None
        self._basic_pending: list[bytes] = []

    async def _after_handshake(self) -> None:
        if self.session_type and self.session_type != "Port":
            await self._shutdown()
            raise WrongSessionType(f"session {self.session_id} is a {self.session_type} session, not a port session")
        local = self.session_properties.get("type") == "LocalPortForwarding"
        self.multiplexed = local and framing.version_greater(self.agent_version, MUX_AFTER_AGENT)
        if self.multiplexed:
            keepalive = not framing.version_greater(self.agent_version, NO_KEEPALIVE_AFTER_AGENT)
            self._mux = smux.SmuxSession(send=self._send_output, client=True, keepalive=keepalive)
            self._mux.start()

    def _on_closed(self) -> None:
        if self._mux is not None:
            self._mux.close()
        if self._basic_writer is not None:
            self._basic_writer.close()

    async def _deliver(self, msg: AgentMessage) -> None:
        if msg.payload_type == PayloadType.OUTPUT:
            self.bytes_received += len(msg.payload)
            if self._mux is not None:
                try:
                    await self._mux.feed(msg.payload)
                except smux.SmuxError as exc:
                    self._on_event(f"smux: {exc}")
            elif self._basic_writer is not None:
                self._basic_writer.write(msg.payload)
                with contextlib.suppress(ConnectionError):
                    await self._basic_writer.drain()
            elif len(self._basic_pending) < 1024:
                # Server-speaks-first protocols: the agent dials at session start, so its first bytes can
                # arrive before any local connection; hand them to the next one.
                self._basic_pending.append(msg.payload)
        elif msg.payload_type == PayloadType.FLAG:
            with contextlib.suppress(framing.FramingError):
                if framing.parse_flag(msg.payload) == Flag.CONNECT_TO_PORT_ERROR:
                    self._on_event("the agent could not connect to the destination port")

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.channel is None or not self._handshake_done.is_set():
            raise RuntimeError("PortSession.start() first")
        try:
            if self._closed.is_set():
                return
            if self._mux is not None:
                await self._handle_mux(reader, writer)
            else:
                async with self._basic_lock:
                    await self._handle_basic(reader, writer)
        except (websockets.exceptions.ConnectionClosed, ChannelError, ChannelClosed, smux.SmuxError):
            pass  # the channel ended under this connection; wait_closed() reports why
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle_mux(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._mux is not None
        stream = await self._mux.open_stream()

        up = asyncio.ensure_future(stream.copy_from(reader, self.payload_size * 4))
        try:
            await stream.copy_to(writer)
        finally:
            stream.discard()
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await up
            await stream.close()

    async def _handle_basic(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.channel is not None
        self._basic_writer = writer
        if self._basic_pending:
            writer.write(b"".join(self._basic_pending))
            self._basic_pending.clear()
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while True:
                read = asyncio.ensure_future(reader.read(self.payload_size))
                done, _ = await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    return
                try:
                    data = read.result()
                except ConnectionError:
                    data = b""
                if not data:
                    break
                await self._send_data(PayloadType.OUTPUT, data)
            # One TCP connection per agent-side connection: tell the agent to close its end.
            if not self._closed.is_set():
                await self.channel.send(PayloadType.FLAG, framing.flag_payload(Flag.DISCONNECT_TO_PORT))
        finally:
            closed.cancel()
            self._basic_writer = None


_EXIT_RE = re.compile(rb"(-?\d+)")


class ShellSession(_Session):
    """An interactive (or command) shell session, as for ECS Exec (`Standard_Stream` / `InteractiveCommands`)."""

    def __init__(self, *, stream_url: str, token: str, session_id: str, client_id: str | None = None,
                 on_event: Callable[[str], None] | None = None, target: str = "", kms_client: Any = None,
                 ca_file: str = "") -> None:
        super().__init__(stream_url=stream_url, token=token, session_id=session_id, client_id=client_id,
                         on_event=on_event, payload_size=None, target=target, kms_client=kms_client, ca_file=ca_file)
        self.exit_code: int | None = None
        self._stdout_fd: int | None = None
        self._early: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _start_timeout(self) -> float | None:
        # Without KMS the agent skips the handshake and the shell's first output is the start, which may
        # come whenever the command prints. The plugin waits for it without a bound; so do we.
        return None

    def _may_end_before_start(self) -> bool:
        return not self._handshake_seen

    async def _deliver(self, msg: AgentMessage) -> None:
        ptype = msg.payload_type
        if ptype in (PayloadType.OUTPUT, PayloadType.STDERR, PayloadType.ERROR):
            if self._stdout_fd is None:  # before run(): keep it for the terminal run() is given
                self._early.append(msg.payload)
                return
            await self._write_out(msg.payload)
        elif ptype == PayloadType.EXIT_CODE:
            match = _EXIT_RE.search(msg.payload)
            if match:
                self.exit_code = int(match.group(1))

    async def _write_out(self, data: bytes) -> None:
        assert self._stdout_fd is not None
        while data:
            try:
                written = os.write(self._stdout_fd, data)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            data = data[written:]

    async def send_size(self, *, cols: int, rows: int) -> None:
        if self.channel is not None:
            await self.channel.send(PayloadType.SIZE, framing.size_payload(cols=cols, rows=rows))

    async def send_input(self, data: bytes) -> None:
        if self.channel is None:
            return
        # The plugin turns a lone LF into CR: terminals send CR for Enter.
        if data == b"\n":
            data = b"\r"
        await self._send_data(PayloadType.OUTPUT, data)

    async def run(self, *, stdin_fd: int | None = 0, stdout_fd: int = 1) -> int:
        """Relay the terminal until the remote shell ends; returns its exit status.

        With a TTY on stdin: raw mode, window size sent now and on SIGWINCH, Ctrl-C goes to the remote
        shell as a byte, the terminal is restored on exit. Without one (stdin_fd None or a pipe): output
        only, and SIGINT is forwarded as Ctrl-C.
        """
        self._stdout_fd = stdout_fd
        early, self._early = self._early, []
        for data in early:
            await self._write_out(data)
        loop = asyncio.get_running_loop()
        interactive = stdin_fd is not None and os.isatty(stdin_fd)
        saved: Any = None
        handlers: list[int] = []
        if interactive:
            import termios
            import tty

            assert stdin_fd is not None
            saved = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd)
            await self._send_terminal_size(stdin_fd)

            def on_winch() -> None:
                self._background(self._send_terminal_size(stdin_fd))

            loop.add_signal_handler(signal.SIGWINCH, on_winch)
            handlers.append(signal.SIGWINCH)
        else:
            def on_int() -> None:
                self._background(self.send_input(b"\x03"))

            with contextlib.suppress(ValueError, RuntimeError):
                loop.add_signal_handler(signal.SIGINT, on_int)
                handlers.append(signal.SIGINT)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        reading = False
        if stdin_fd is not None:
            def on_readable() -> None:
                assert stdin_fd is not None
                try:
                    data = os.read(stdin_fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(stdin_fd)
                queue.put_nowait(data)

            loop.add_reader(stdin_fd, on_readable)
            reading = True

        async def pump() -> None:
            while data := await queue.get():
                await self.send_input(data)

        pumper = asyncio.ensure_future(pump())
        try:
            await self.wait_closed()
        finally:
            pumper.cancel()
            if reading and stdin_fd is not None:
                loop.remove_reader(stdin_fd)
            for sig in handlers:
                loop.remove_signal_handler(sig)
            if saved is not None and stdin_fd is not None:
                import termios

                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            await self._shutdown()
        return self.exit_code if self.exit_code is not None else 0

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_terminal_size(self, fd: int) -> None:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            return
        with contextlib.suppress(Exception):
            await self.send_size(cols=size.columns, rows=size.lines)


def run_shell(*, stream_url: str, token: str, session_id: str, stdin_fd: int | None = 0, stdout_fd: int = 1,
              on_event: Callable[[str], None] | None = None, target: str = "", kms_client: Any = None,
              ca_file: str = "") -> int:
    """Blocking helper for the CLI: open the shell session, relay it, return the remote exit status."""

    async def main() -> int:
        shell = ShellSession(stream_url=stream_url, token=token, session_id=session_id, on_event=on_event,
                             target=target, kms_client=kms_client, ca_file=ca_file)
        await shell.start()
        return await shell.run(stdin_fd=stdin_fd, stdout_fd=stdout_fd)

    return asyncio.run(main())

