"""The data channel's protocol core, without I/O: bytes in, events out.

It owns what the plugin's `datachannel/streaming.go` and the agent's `session/datachannel` agree on:
outgoing sequence numbers, a bounded window of unacknowledged stream messages resent on a
round-trip-time based timeout, acknowledgement of every received stream message (duplicates too, so a
lost ack cannot stall the peer), in-order delivery with a reorder buffer, pause/start publication,
and the channel's state. It never reads a clock (every call is given `now`), never sleeps and never
sends: `send` returns the frame to put on the wire, `receive` returns events, `timer` returns the
frames due again. `ops.ssm.channel.Channel` runs it on asyncio for the client and the sandbox agent
alike; tests run it with a fake clock (in the manner of h11 and the websockets library).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ops.ssm import framing
from ops.ssm.errors import ProtocolError
from ops.ssm.framing import AgentMessage

DEFAULT_RTT = 0.1
DEFAULT_RTO = 0.2
MAX_RTO = 1.0
# Our floor (the plugin has none): queueing under bulk transfer made 10-30 ms timeouts resend spuriously.
MIN_RTO = 0.2
CLOCK_GRANULARITY = 0.01
RESEND_MAX_ATTEMPTS = 3000
DEFAULT_WINDOW = 512
INCOMING_CAPACITY = 10000
# Handshake messages are acknowledged before they are acted on (as the plugin does): the peer's next
# step (e.g. the plugin switching its message handler after HandshakeComplete) must not race the ack.
ACK_BEFORE_HANDLING = frozenset({
    framing.PayloadType.HANDSHAKE_REQUEST, framing.PayloadType.HANDSHAKE_RESPONSE,
    framing.PayloadType.HANDSHAKE_COMPLETE, framing.PayloadType.ENC_CHALLENGE_REQUEST,
    framing.PayloadType.ENC_CHALLENGE_RESPONSE,
})


class ChannelError(ProtocolError):
    """The peer stopped acknowledging (resend budget exhausted), the channel cannot send, or delivery failed."""


class State(enum.Enum):
    OPEN = "open"      # sending and receiving
    PAUSED = "paused"  # the peer paused publication: sends wait, receiving goes on
    CLOSED = "closed"  # the peer closed the channel (channel_closed): nothing more is sent
    FAILED = "failed"  # the peer stopped acknowledging, or the application failed a delivery


@dataclass(frozen=True, slots=True)
class Transmit:
    """Put this frame on the wire now (an acknowledgement)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand `message` to the application, in this order. Then send `ack`, or before handling when
    `ack_first`; a data message acknowledged only once handled holds back a sender we cannot keep up with.
    `ack` is None for a message that was acknowledged when it arrived early."""

    message: AgentMessage
    ack: bytes | None
    ack_first: bool = False


@dataclass(frozen=True, slots=True)
class PeerClosed:
    message: AgentMessage


@dataclass(frozen=True, slots=True)
class PublicationChanged:
    publishing: bool


Event = Transmit | Deliver | PeerClosed | PublicationChanged


@dataclass(slots=True)
class _Outgoing:
    frame: bytes
    sent_at: float
    attempts: int = 0


class ChannelCore:
    def __init__(self, *, outgoing_type: str, window: int = DEFAULT_WINDOW,
                 max_attempts: int = RESEND_MAX_ATTEMPTS,
                 decode: Callable[[bytes], AgentMessage] = framing.decode) -> None:
        if outgoing_type not in framing.STREAM_TYPES:
            raise ValueError(outgoing_type)
        self.outgoing_type = outgoing_type
        self.incoming_type = (framing.OUTPUT_STREAM_DATA if outgoing_type == framing.INPUT_STREAM_DATA
                              else framing.INPUT_STREAM_DATA)
        # The plugin and the agent validate frames differently (framing.decode / decode_as_agent).
        self._decode = decode
        self.window = window
        self.max_attempts = max_attempts
        self.state = State.OPEN
        self.next_seq = 0
        self.expected_seq = 0
        self._unacked: OrderedDict[int, _Outgoing] = OrderedDict()
        self._incoming: dict[int, AgentMessage] = {}
        self.rtt = DEFAULT_RTT
        self.rtt_var = 0.0
        self.rto = DEFAULT_RTO
        self.resent = 0
        self.duplicates = 0
        self.failed: ChannelError | None = None

    # ---- outgoing ----
    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def can_send(self) -> bool:
        return self.state is State.OPEN and len(self._unacked) < self.window

    def send(self, payload_type: int, payload: bytes, now: float) -> bytes:
        """The frame of the next stream message. Raises ChannelError unless `can_send()`."""
        if self.failed is not None:
            raise self.failed
        if self.state is State.CLOSED:
            raise ChannelError("the peer closed the channel")
        if not self.can_send():
            raise ChannelError("publication is paused" if self.state is State.PAUSED else "the window is full")
        seq = self.next_seq
        self.next_seq += 1
        frame = framing.encode(AgentMessage(message_type=self.outgoing_type, payload=payload,
                                            payload_type=payload_type, sequence_number=seq))
        self._unacked[seq] = _Outgoing(frame, now)
        return frame

    def timer(self, now: float) -> list[bytes]:
        """The frames whose acknowledgement is overdue, to send again; none while paused. When one has
        used up its attempts the channel fails (`failed`) and nothing more is resent."""
        if self.state is not State.OPEN:
            return []
        due = []
        for item in self._unacked.values():
            if now - item.sent_at <= self.rto:
                continue
            if item.attempts >= self.max_attempts:
                self.fail(ChannelError(f"peer stopped acknowledging after {item.attempts} resends"))
                return []
            item.attempts += 1
            item.sent_at = now
            self.resent += 1
            due.append(item.frame)
        return due

    def resend_now(self) -> None:
        """After a new websocket (resume): everything unacknowledged is due at the next timer call."""
        for item in self._unacked.values():
            item.sent_at = float("-inf")

    def fail(self, error: ChannelError) -> None:
        if self.failed is None:
            self.failed = error
            self.state = State.FAILED

    def _acked(self, seq: int, now: float) -> None:
        item = self._unacked.pop(seq, None)
        if item is None or item.attempts:
            return
        # Karn: only first transmissions give an unambiguous sample.
        sample = max(0.0, now - item.sent_at)
        self.rtt_var = 0.75 * self.rtt_var + 0.25 * abs(self.rtt - sample)
        self.rtt = 0.875 * self.rtt + 0.125 * sample
        self.rto = min(MAX_RTO, max(MIN_RTO, self.rtt + max(CLOCK_GRANULARITY, 4 * self.rtt_var)))

    # ---- incoming ----
    def receive(self, raw: bytes, now: float) -> list[Event]:
        """Events for one frame from the peer. Raises FramingError (only) on a malformed frame."""
        msg = self._decode(raw)
        mtype = msg.message_type
        if mtype == framing.ACKNOWLEDGE:
            self._acked(framing.acked_sequence(msg), now)
            return []
        if mtype == self.incoming_type:
            return self._stream(msg)
        if mtype == framing.PAUSE_PUBLICATION:
            if self.state is State.OPEN:
                self.state = State.PAUSED
                return [PublicationChanged(False)]
            return []
        if mtype == framing.START_PUBLICATION:
            if self.state is State.PAUSED:
                self.state = State.OPEN
                return [PublicationChanged(True)]
            return []
        if mtype == framing.CHANNEL_CLOSED:
            if self.state in (State.OPEN, State.PAUSED):
                self.state = State.CLOSED
            return [PeerClosed(msg)]
        # Our own outgoing type echoed back is ignored, as the plugin does for unknown kinds.
        return []

    def _stream(self, msg: AgentMessage) -> list[Event]:
        seq = msg.sequence_number
        if seq < self.expected_seq or seq in self._incoming:
            self.duplicates += 1
            return [Transmit(framing.encode(framing.ack_for(msg)))]
        if seq > self.expected_seq:
            if len(self._incoming) >= INCOMING_CAPACITY:
                return []  # unacknowledged: the peer sends it again
            self._incoming[seq] = msg
            return [Transmit(framing.encode(framing.ack_for(msg)))]
        events: list[Event] = [Deliver(msg, framing.encode(framing.ack_for(msg)),
                                       ack_first=msg.payload_type in ACK_BEFORE_HANDLING)]
        self.expected_seq += 1
        while (nxt := self._incoming.pop(self.expected_seq, None)) is not None:
            events.append(Deliver(nxt, None))
            self.expected_seq += 1
        return events
