"""smux protocol version 1 (xtaci/smux, the multiplexer the plugin and the agent use in port sessions).

Frame: an 8-byte header `version(1) cmd(1) length(uint16 LE) stream_id(uint32 LE)` then `length`
bytes of data. Commands: SYN opens a stream, FIN closes the sender's half, PSH carries data, NOP is
the keep-alive. The client opens odd stream ids (1, 3, ...). Keep-alive (NOP every 10 s, session
dropped after 30 s of silence) is on unless both sides are new enough to disable it.

The byte stream of frames travels as the payload of OUTPUT stream messages on the data channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Awaitable, Callable

from ops.ssm.errors import ProtocolError

VERSION = 1
CMD_SYN = 0
CMD_FIN = 1
CMD_PSH = 2
CMD_NOP = 3
_HEADER = struct.Struct("<BBHI")
HEADER_SIZE = _HEADER.size
MAX_FRAME_SIZE = 32768
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 30.0
# Like smux's MaxReceiveBuffer: past this many unread bytes on a stream, `feed` waits, so the data
# channel stops acknowledging and the sender's window closes (no unbounded buffering).
STREAM_BUFFER = 4 * 1024 * 1024

SendBytes = Callable[[bytes], Awaitable[None]]


class SmuxError(ProtocolError):
    pass


def frame(cmd: int, stream_id: int, data: bytes = b"") -> bytes:
    return _HEADER.pack(VERSION, cmd, len(data), stream_id) + data


def data_frames(stream_id: int, data: bytes, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    if len(data) <= max_frame:
        return frame(CMD_PSH, stream_id, data)
    view = memoryview(data)
    return b"".join(frame(CMD_PSH, stream_id, bytes(view[i:i + max_frame])) for i in range(0, len(data), max_frame))


class FrameParser:
    """Incremental parser: feed arbitrary chunks, get whole frames (cmd, sid, data)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += chunk
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            ver, cmd, length, sid = _HEADER.unpack_from(buf, pos)
            if ver != VERSION:
                raise SmuxError(f"smux version {ver} (only v1 is spoken)")
            if cmd > CMD_NOP:
                raise SmuxError(f"invalid smux command {cmd}")
            if end - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            out.append((cmd, sid, bytes(buf[start:start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out


class Stream:
    """One multiplexed stream: a byte queue in, frames out."""

    def __init__(self, session: SmuxSession, stream_id: int) -> None:
        self.session = session
        self.id = stream_id
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False
        self.discarding = False
        self.buffered = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def _push(self, data: bytes) -> None:
        if self.discarding:
            return
        self.buffered += len(data)
        if self.buffered > STREAM_BUFFER:
            self._drained.clear()
        self._chunks.put_nowait(data)

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def discard(self) -> None:
        """Nobody reads this stream any more: drop what arrives instead of buffering it."""
        self.discarding = True
        self._drained.set()

    def _eof(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._chunks.put_nowait(b"")

    async def read(self) -> bytes:
        """Next chunk; b"" at end of stream."""
        data = await self._chunks.get()
        if not data:
            self._chunks.put_nowait(b"")
        self.buffered -= len(data)
        if self.buffered <= STREAM_BUFFER // 2:
            self._drained.set()
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise SmuxError("write on a closed stream")
        await self.session.send(data_frames(self.id, data))

    async def copy_from(self, reader: asyncio.StreamReader, chunk: int) -> None:
        """TCP -> this stream until the socket's EOF, then FIN (one half of io.Copy in the agent)."""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(chunk):
                await self.write(data)
        await self.close()

    async def copy_to(self, writer: asyncio.StreamWriter) -> None:
        """This stream -> TCP until the peer's FIN; a socket closed under us is an ordinary end."""
        with contextlib.suppress(ConnectionError):
            while data := await self.read():
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        if not self.local_closed:
            self.local_closed = True
            with contextlib.suppress(Exception):
                await self.session.send(frame(CMD_FIN, self.id))
            if self.remote_closed:
                self.session.streams.pop(self.id, None)


class SmuxSession:
    def __init__(self, *, send: SendBytes, client: bool, keepalive: bool,
                 on_accept: Callable[[Stream], Awaitable[None]] | None = None) -> None:
        self.send = send
        self.client = client
        self.keepalive = keepalive
        self._on_accept = on_accept
        self._next_id = 1 if client else 2
        self.streams: dict[int, Stream] = {}
        self._parser = FrameParser()
        self._last_rx = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    def start(self) -> None:
        if self.keepalive:
            self._spawn(self._keepalive_loop())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open_stream(self) -> Stream:
        sid = self._next_id
        self._next_id += 2
        stream = Stream(self, sid)
        self.streams[sid] = stream
        await self.send(frame(CMD_SYN, sid))
        return stream

    async def feed(self, chunk: bytes) -> None:
        self._last_rx = time.monotonic()
        for cmd, sid, data in self._parser.feed(chunk):
            if cmd == CMD_PSH:
                stream = self.streams.get(sid)
                if stream is not None and data:
                    stream._push(data)
                    if not stream._drained.is_set():
                        await stream.wait_drained()
            elif cmd == CMD_FIN:
                stream = self.streams.get(sid)
                if stream is not None:
                    stream._eof()
                    if stream.local_closed:
                        self.streams.pop(sid, None)
            elif cmd == CMD_SYN:
                if sid not in self.streams:
                    stream = Stream(self, sid)
                    self.streams[sid] = stream
                    if self._on_accept is not None:
                        self._spawn(self._on_accept(stream))
            # NOP: only refreshes _last_rx.

    async def _keepalive_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            if time.monotonic() - self._last_rx > KEEPALIVE_TIMEOUT:
                self.close()
                return
            with contextlib.suppress(Exception):
                await self.send(frame(CMD_NOP, 0))

    async def aclose(self, timeout: float = 2.0) -> None:
        """close(), then give the stream handlers a bounded moment to run their clean-up, so none is
        left pending when the event loop ends."""
        self.close()
        pending = [t for t in self._tasks if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def close(self) -> None:
        self.closed.set()
        for stream in list(self.streams.values()):
            stream._eof()
            stream.discard()
        for task in list(self._tasks):
            task.cancel()
