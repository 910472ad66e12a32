"""asyncio edges around `ops.pgwire`: read one start-up packet or one typed message from a stream, and
splice two streams both ways. Shared by the local auth proxy and the sandbox's RDS front."""

from __future__ import annotations

import asyncio
import contextlib
import struct

from ops import pgwire

CHUNK = 64 * 1024


async def read_first(reader: asyncio.StreamReader) -> pgwire.FirstPacket:
    head = await reader.readexactly(4)
    (length,) = struct.unpack("!i", head)
    if not 8 <= length <= pgwire.MAX_STARTUP_LENGTH:
        raise pgwire.ProtocolError("invalid start-up packet length")
    return pgwire.decode_first(head + await reader.readexactly(length - 4))


async def read_message(reader: asyncio.StreamReader) -> pgwire.Message:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    if not 4 <= length <= pgwire.MAX_MESSAGE_LENGTH:
        raise pgwire.ProtocolError(f"invalid length for message {head[:1]!r}")
    return pgwire.Message(kind=head[:1], body=await reader.readexactly(length - 4))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until one direction ends (or fails), then close both."""
    tasks = [asyncio.create_task(_pump(a[0], b[1])), asyncio.create_task(_pump(b[0], a[1]))]
    try:
        # PostgreSQL never half-closes: when one side ends (Terminate, or the server closes the session),
        # the connection is over, and everything read so far has been written and drained.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close(a[1])
        await close(b[1])


async def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout=2)
