"""The data channel's protocol core driven by hand with a fake clock: deterministic, no I/O, no tasks."""

from __future__ import annotations

import random

import pytest

from ops.ssm import framing
from ops.ssm.core import (
    MIN_RTO,
    ChannelCore,
    ChannelError,
    Deliver,
    PeerClosed,
    PublicationChanged,
    State,
    Transmit,
)
from ops.ssm.framing import AgentMessage, FramingError, PayloadType


def client() -> ChannelCore:
    return ChannelCore(outgoing_type=framing.INPUT_STREAM_DATA, window=3, max_attempts=2)


def from_agent(seq: int, payload: bytes = b"x", ptype: int = PayloadType.OUTPUT) -> bytes:
    return framing.encode(AgentMessage(message_type=framing.OUTPUT_STREAM_DATA, payload=payload,
                                       payload_type=ptype, sequence_number=seq))


def ack_of(frame: bytes) -> bytes:
    return framing.encode(framing.ack_for(framing.decode(frame)))


def acked_seq(frame: bytes) -> int:
    return framing.acked_sequence(framing.decode(frame))


def test_send_numbers_frames_and_the_window_closes_until_acks_arrive() -> None:
    core = client()
    frames = [core.send(PayloadType.OUTPUT, bytes([i]), now=0.0) for i in range(3)]
    assert [framing.decode(f).sequence_number for f in frames] == [0, 1, 2]
    assert not core.can_send() and core.unacked == 3
    with pytest.raises(ChannelError, match="window is full"):
        core.send(PayloadType.OUTPUT, b"more", now=0.0)
    assert core.receive(ack_of(frames[1]), now=0.05) == []
    assert core.can_send() and core.unacked == 2
    # The first transmission's round trip (50 ms) is the RTT sample; the timeout keeps its floor.
    assert core.rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.05)
    assert core.rto == MIN_RTO


def test_timer_resends_overdue_frames_then_fails_when_the_budget_is_spent() -> None:
    core = client()
    frame = core.send(PayloadType.OUTPUT, b"a", now=0.0)
    assert core.timer(now=MIN_RTO) == []  # not overdue yet
    assert core.timer(now=MIN_RTO + 0.01) == [frame]
    assert core.timer(now=MIN_RTO + 0.02) == []  # its clock restarted
    assert core.timer(now=2 * MIN_RTO + 0.02) == [frame]
    assert core.resent == 2 and core.state is State.OPEN
    assert core.timer(now=10.0) == []
    assert core.state is State.FAILED and core.failed is not None
    with pytest.raises(ChannelError, match="stopped acknowledging after 2 resends"):
        core.send(PayloadType.OUTPUT, b"b", now=10.0)


def test_a_resent_frame_gives_no_rtt_sample_and_resume_makes_everything_due() -> None:
    core = client()
    first = core.send(PayloadType.OUTPUT, b"a", now=0.0)
    second = core.send(PayloadType.OUTPUT, b"b", now=0.0)
    assert core.timer(now=0.3) == [first, second]
    core.receive(ack_of(first), now=5.0)  # Karn: an ack of a resent frame is ambiguous
    assert core.rtt == pytest.approx(0.1)
    core.resend_now()
    assert core.timer(now=5.0) == [second]


def test_in_order_delivery_with_a_reorder_buffer_and_acks() -> None:
    core = client()
    early = core.receive(from_agent(1, b"second"), now=0.0)
    assert [type(e) for e in early] == [Transmit]
    assert acked_seq(early[0].frame) == 1  # type: ignore[union-attr]
    events = core.receive(from_agent(0, b"first"), now=0.0)
    assert [(type(e), e.message.payload) for e in events if isinstance(e, Deliver)] == [
        (Deliver, b"first"), (Deliver, b"second")]
    first, second = events
    assert isinstance(first, Deliver) and first.ack is not None and not first.ack_first
    assert acked_seq(first.ack) == 0
    assert isinstance(second, Deliver) and second.ack is None  # acknowledged when it arrived
    assert core.expected_seq == 2


def test_duplicates_are_acknowledged_again_and_not_delivered() -> None:
    core = client()
    core.receive(from_agent(0), now=0.0)
    again = core.receive(from_agent(0), now=0.1)
    assert [type(e) for e in again] == [Transmit] and core.duplicates == 1


def test_handshake_messages_are_acknowledged_before_they_are_handled() -> None:
    core = client()
    (event,) = core.receive(from_agent(0, b"{}", PayloadType.HANDSHAKE_REQUEST), now=0.0)
    assert isinstance(event, Deliver) and event.ack_first


def test_pause_and_start_publication_are_states() -> None:
    core = client()
    pause = framing.encode(AgentMessage(message_type=framing.PAUSE_PUBLICATION, payload=b""))
    start = framing.encode(AgentMessage(message_type=framing.START_PUBLICATION, payload=b""))
    assert core.receive(pause, now=0.0) == [PublicationChanged(False)]
    assert core.state is State.PAUSED and not core.can_send()
    assert core.receive(pause, now=0.0) == []
    with pytest.raises(ChannelError, match="paused"):
        core.send(PayloadType.OUTPUT, b"a", now=0.0)
    assert core.receive(start, now=0.0) == [PublicationChanged(True)]
    assert core.state is State.OPEN and core.can_send()


def test_the_peer_closing_ends_sending() -> None:
    core = client()
    closed = framing.encode(framing.channel_closed(session_id="s-1", output="bye"))
    (event,) = core.receive(closed, now=0.0)
    assert isinstance(event, PeerClosed) and core.state is State.CLOSED
    with pytest.raises(ChannelError, match="closed"):
        core.send(PayloadType.OUTPUT, b"a", now=0.0)


def test_two_cores_back_to_back_over_a_lossy_wire_deliver_everything_in_order() -> None:
    """Deterministic: one seed, a fake clock, a wire that loses a third of the stream frames."""
    rng = random.Random(16)
    a = ChannelCore(outgoing_type=framing.INPUT_STREAM_DATA, window=8)
    b = ChannelCore(outgoing_type=framing.OUTPUT_STREAM_DATA, window=8)
    sent = [f"m{i}".encode() for i in range(200)]
    got: list[bytes] = []
    wire: list[tuple[ChannelCore, bytes]] = []
    now = 0.0

    def put(target: ChannelCore, frame: bytes) -> None:
        if framing.decode(frame).message_type in framing.STREAM_TYPES and rng.random() < 0.33:
            return
        wire.append((target, frame))

    pending = list(sent)
    while len(got) < len(sent):
        now += 0.05
        while pending and a.can_send():
            put(b, a.send(PayloadType.OUTPUT, pending.pop(0), now))
        for frame in a.timer(now):
            put(b, frame)
        rng.shuffle(wire)
        carried, wire[:] = list(wire), []
        for target, frame in carried:
            for event in target.receive(frame, now):
                if isinstance(event, Transmit):
                    put(a, event.frame)
                elif isinstance(event, Deliver):
                    got.append(event.message.payload)
                    if event.ack is not None:
                        put(a, event.ack)
        assert now < 600, "no progress"
    assert got == sent and a.resent > 0


def test_decode_and_receive_raise_only_their_own_error_on_arbitrary_bytes() -> None:
    """A fuzz test: random bytes, and valid frames truncated, extended, spliced and bit-flipped."""
    rng = random.Random(1616)
    valid = [from_agent(7, b"payload" * 20), framing.encode(framing.ack_for(framing.decode(from_agent(3)))),
             framing.encode(framing.channel_closed(session_id="s", output="x")),
             framing.encode(AgentMessage(message_type=framing.PAUSE_PUBLICATION, payload=b""))]
    cases: list[bytes] = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))) for _ in range(2000)]
    for _ in range(6000):
        data = bytearray(rng.choice(valid))
        kind = rng.randrange(4)
        if kind == 0:
            data = data[:rng.randrange(len(data))]
        elif kind == 1:
            data += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))
        elif kind == 2:
            cut = rng.randrange(len(data))
            data = data[:cut] + bytearray(rng.choice(valid))[cut:]
        for _ in range(rng.randrange(1, 4) if data else 0):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        cases.append(bytes(data))
    for data in cases:
        for decode in (framing.decode, framing.decode_as_agent):
            try:
                decode(data)
            except FramingError:
                pass
        core = ChannelCore(outgoing_type=framing.INPUT_STREAM_DATA, decode=rng.choice(
            [framing.decode, framing.decode_as_agent]))
        try:
            core.receive(data, now=0.0)
        except FramingError:
            pass
