"""The channel state machine on its own: two channels wired back to back in memory."""

from __future__ import annotations

import asyncio
import random

from ops.ssm import framing
from ops.ssm.channel import Channel
from ops.ssm.framing import AgentMessage, PayloadType


class Wire:
    """Carries frames between two channels, optionally losing or reordering stream messages."""

    def __init__(self, *, lose: float = 0.0, shuffle: bool = False, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.lose = lose
        self.shuffle = shuffle
        self.lost = 0
        self.a_got: list[AgentMessage] = []
        self.b_got: list[AgentMessage] = []

        async def a_deliver(msg: AgentMessage) -> None:
            self.a_got.append(msg)

        async def b_deliver(msg: AgentMessage) -> None:
            self.b_got.append(msg)

        self.a = Channel(send_frame=self._to_b, outgoing_type=framing.INPUT_STREAM_DATA, on_message=a_deliver,
                         resend_interval=0.01)
        self.b = Channel(send_frame=self._to_a, outgoing_type=framing.OUTPUT_STREAM_DATA, on_message=b_deliver,
                         resend_interval=0.01)

    async def _carry(self, target: Channel, frame: bytes) -> None:
        is_stream = frame[4:36].rstrip(b" ").decode() in framing.STREAM_TYPES
        if is_stream and self.rng.random() < self.lose:
            self.lost += 1
            return
        if self.shuffle:
            await asyncio.sleep(self.rng.random() * 0.003)
        await target.receive(frame)

    async def _to_b(self, frame: bytes) -> None:
        if self.shuffle:
            asyncio.get_running_loop().create_task(self._carry(self.b, frame))
        else:
            await self._carry(self.b, frame)

    async def _to_a(self, frame: bytes) -> None:
        if self.shuffle:
            asyncio.get_running_loop().create_task(self._carry(self.a, frame))
        else:
            await self._carry(self.a, frame)


def payloads(got: list[AgentMessage]) -> list[bytes]:
    return [m.payload for m in got]


def test_in_order_delivery_and_acks_clear_window() -> None:
    async def main() -> None:
        wire = Wire()
        wire.a.start()
        for i in range(50):
            await wire.a.send(PayloadType.OUTPUT, b"m%d" % i)
        assert await wire.a.drain(timeout=5)
        assert payloads(wire.b_got) == [b"m%d" % i for i in range(50)]
        assert wire.a.unacked == 0
        assert [m.sequence_number for m in wire.b_got] == list(range(50))
        await wire.a.stop()

    asyncio.run(main())


def test_loss_and_reorder_recovered_by_retransmission() -> None:
    async def main() -> None:
        wire = Wire(lose=0.2, shuffle=True)
        wire.a.start()
        wire.b.start()
        sent = [b"%05d" % i for i in range(300)]
        for p in sent:
            await wire.a.send(PayloadType.OUTPUT, p)
            await wire.b.send(PayloadType.OUTPUT, p)
        assert await wire.a.drain(timeout=20)
        assert await wire.b.drain(timeout=20)
        assert payloads(wire.b_got) == sent
        assert payloads(wire.a_got) == sent
        assert wire.lost > 0
        assert wire.a.resent > 0
        await wire.a.stop()
        await wire.b.stop()

    asyncio.run(main())


def test_duplicates_are_acked_and_dropped() -> None:
    async def main() -> None:
        frames: list[bytes] = []

        async def capture(frame: bytes) -> None:
            frames.append(frame)

        got: list[AgentMessage] = []

        async def deliver(msg: AgentMessage) -> None:
            got.append(msg)

        rx = Channel(send_frame=capture, outgoing_type=framing.OUTPUT_STREAM_DATA, on_message=deliver)
        msg = framing.encode(AgentMessage(message_type=framing.INPUT_STREAM_DATA, payload=b"x",
                                          payload_type=PayloadType.OUTPUT, sequence_number=0))
        await rx.receive(msg)
        await rx.receive(msg)
        await rx.settle()
        assert len(got) == 1
        assert rx.duplicates == 1
        acks = [framing.decode(f) for f in frames]
        assert [framing.acked_sequence(a) for a in acks] == [0, 0]

    asyncio.run(main())


def test_pause_publication_holds_sends_until_start() -> None:
    async def main() -> None:
        wire = Wire()
        pause = framing.encode(AgentMessage(message_type=framing.PAUSE_PUBLICATION))
        start = framing.encode(AgentMessage(message_type=framing.START_PUBLICATION))
        await wire.a.receive(pause)
        sender = asyncio.ensure_future(wire.a.send(PayloadType.OUTPUT, b"held"))
        await asyncio.sleep(0.05)
        assert not sender.done()
        assert wire.b_got == []
        await wire.a.receive(start)
        await asyncio.wait_for(sender, 1)
        assert await wire.a.drain(timeout=5)
        assert payloads(wire.b_got) == [b"held"]

    asyncio.run(main())


def test_full_window_blocks_sender() -> None:
    async def main() -> None:
        async def black_hole(frame: bytes) -> None:
            return None

        async def deliver(msg: AgentMessage) -> None:
            return None

        ch = Channel(send_frame=black_hole, outgoing_type=framing.INPUT_STREAM_DATA, on_message=deliver, window=4)
        for _ in range(4):
            await ch.send(PayloadType.OUTPUT, b"x")
        blocked = asyncio.ensure_future(ch.send(PayloadType.OUTPUT, b"y"))
        await asyncio.sleep(0.02)
        assert not blocked.done()
        ack = framing.ack_for(AgentMessage(message_type=framing.INPUT_STREAM_DATA, sequence_number=0))
        await ch.receive(framing.encode(ack))
        await asyncio.wait_for(blocked, 1)
        assert ch.unacked == 4

    asyncio.run(main())


def test_acks_still_flow_while_delivery_is_blocked() -> None:
    """A stalled consumer must not stop the channel from processing acks for its own sends."""

    async def main() -> None:
        gate = asyncio.Event()
        sent_frames: list[bytes] = []

        async def capture(frame: bytes) -> None:
            sent_frames.append(frame)

        async def slow(msg: AgentMessage) -> None:
            await gate.wait()

        ch = Channel(send_frame=capture, outgoing_type=framing.INPUT_STREAM_DATA, on_message=slow, window=2)
        incoming = AgentMessage(message_type=framing.OUTPUT_STREAM_DATA, payload=b"x", payload_type=PayloadType.OUTPUT)
        await ch.receive(framing.encode(incoming))  # delivery now blocked on the gate
        await ch.send(PayloadType.OUTPUT, b"a")
        await ch.send(PayloadType.OUTPUT, b"b")
        for seq in (0, 1):
            ack = framing.ack_for(AgentMessage(message_type=framing.INPUT_STREAM_DATA, sequence_number=seq))
            await asyncio.wait_for(ch.receive(framing.encode(ack)), 1)
        assert ch.unacked == 0
        await asyncio.wait_for(ch.send(PayloadType.OUTPUT, b"c"), 1)  # window open again
        gate.set()
        await ch.settle()
        await ch.stop()

    asyncio.run(main())


def test_an_ack_that_cannot_go_out_after_the_peer_closed_does_not_fail_the_channel() -> None:
    """TerminateSession while the client still handles the agent's last message: by the time its ack is due
    the session is closed and the client's send refuses. That used to fail the channel, which the client
    reports as a dropped websocket (so the tunnel tried to resume a session that had ended)."""
    closed = False
    delivered: list[AgentMessage] = []

    async def send_frame(_frame: bytes) -> None:
        if closed:
            raise ConnectionError("data channel not open")

    async def on_message(msg: AgentMessage) -> None:
        nonlocal closed
        delivered.append(msg)
        closed = True  # the channel_closed arrived while this was being handled

    async def main() -> Channel:
        channel = Channel(send_frame=send_frame, outgoing_type=framing.INPUT_STREAM_DATA, on_message=on_message)
        frame = framing.encode(AgentMessage(message_type=framing.OUTPUT_STREAM_DATA, payload=b"last",
                                            payload_type=PayloadType.OUTPUT, sequence_number=0))
        await channel.receive(frame)
        await channel.settle()
        await channel.receive(frame)  # resent: its ack (a Transmit) cannot go out either
        await channel.stop()
        return channel

    channel = asyncio.run(main())
    assert [m.payload for m in delivered] == [b"last"]
    assert channel.failed is None
