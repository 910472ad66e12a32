"""Writes on a multiplexed port session stay contiguous (ops.ssm.client._Session._send_output).

A smux frame longer than a message goes out as several messages. When sending one waits (window full,
websocket draining), another stream's writer must not slip its messages in between: the agent reads the
stream of messages as one byte stream of frames, and interleaved frames are garbage to it. In a loaded
run 64 concurrent connections hung that way (the echo server had read part of each payload, the rest
never came). smux's own sendLoop writes whole frames, one at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ops.ssm import smux
from ops.ssm.client import PortSession


class WaitingChannel:
    """Stands in for the data channel: every send waits a turn, as one does when the window is full."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, payload_type: int, payload: bytes) -> None:
        await asyncio.sleep(0)
        self.sent.append(payload)


def session(payload_size: int) -> tuple[PortSession, WaitingChannel]:
    ps = PortSession(stream_url="wss://example.invalid/v1/data-channel/s", token="t", session_id="s",
                     payload_size=payload_size)
    channel = WaitingChannel()
    ps.channel = channel  # type: ignore[assignment]
    return ps, channel


def test_two_streams_frames_arrive_whole_and_parse_back() -> None:
    ps, channel = session(payload_size=100)
    payloads = {1: bytes(range(256)) * 4, 3: b"x" * 700, 5: b"y" * 90}

    async def main() -> None:
        await asyncio.gather(*(ps._send_output(smux.data_frames(sid, data)) for sid, data in payloads.items()))

    asyncio.run(main())
    assert all(len(p) <= 100 for p in channel.sent)
    frames = smux.FrameParser().feed(b"".join(channel.sent))
    received: dict[int, bytes] = {}
    for cmd, sid, data in frames:
        assert cmd == smux.CMD_PSH
        received[sid] = received.get(sid, b"") + data
    assert received == payloads


def test_without_the_lock_the_same_writes_interleave() -> None:
    # The control: the channel above does make concurrent writers take turns, so only the lock keeps order.
    ps, channel = session(payload_size=100)

    async def unlocked(data: bytes) -> None:
        for i in range(0, len(data), 100):
            await ps._send_data(1, data[i:i + 100])

    async def main() -> None:
        await asyncio.gather(unlocked(b"a" * 300), unlocked(b"b" * 300))

    asyncio.run(main())
    assert [p[:1] for p in channel.sent] == [b"a", b"b", b"a", b"b", b"a", b"b"]


def test_a_keepalive_waits_for_a_long_frame_in_flight() -> None:
    ps, channel = session(payload_size=10)
    sent: list[Any] = []

    async def main() -> None:
        long_write = asyncio.ensure_future(ps._send_output(smux.data_frames(1, b"z" * 50)))
        await asyncio.sleep(0)  # the long write has its first message out and waits for its turn
        await ps._send_output(smux.frame(smux.CMD_NOP, 0))
        sent.append(long_write.done())

    asyncio.run(main())
    assert sent == [True], "the keep-alive went out only after the long frame's last message"
    frames = smux.FrameParser().feed(b"".join(channel.sent))
    assert [(cmd, sid) for cmd, sid, _ in frames] == [(smux.CMD_PSH, 1), (smux.CMD_NOP, 0)]
