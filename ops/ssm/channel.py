"""The data-channel state machine, shared by the client and the sandbox agent.

What it owns (semantics learnt from the plugin's `datachannel/streaming.go` and the agent's
`session/datachannel`): outgoing sequence numbers, a bounded window of unacknowledged stream
messages resent on a round-trip-time based timeout, acknowledgement of every received stream
message (duplicates too, so a lost ack cannot stall the peer), in-order delivery with a reorder
buffer, and pause/start publication. It knows nothing about websockets or TCP: frames go out
through `send_frame` and come in through `receive`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ops.ssm import framing
from ops.ssm.errors import ProtocolError
from ops.ssm.framing import AgentMessage

SendFrame = Callable[[bytes], Awaitable[None]]
OnMessage = Callable[[AgentMessage], Awaitable[None]]

DEFAULT_RTT = 0.1
DEFAULT_RTO = 0.2
MAX_RTO = 1.0
# Our floor (the plugin has none): queueing under bulk transfer made 10-30 ms timeouts resend spuriously.
MIN_RTO = 0.2
CLOCK_GRANULARITY = 0.01
RESEND_INTERVAL = 0.1
RESEND_MAX_ATTEMPTS = 3000
DEFAULT_WINDOW = 512
INCOMING_CAPACITY = 10000
# Handshake messages are acknowledged before they are acted on (as the plugin does): the peer's next
# step (e.g. the plugin switching its message handler after HandshakeComplete) must not race the ack.
_ACK_BEFORE_HANDLING = frozenset({
    framing.PayloadType.HANDSHAKE_REQUEST, framing.PayloadType.HANDSHAKE_RESPONSE,
    framing.PayloadType.HANDSHAKE_COMPLETE, framing.PayloadType.ENC_CHALLENGE_REQUEST,
    framing.PayloadType.ENC_CHALLENGE_RESPONSE,
})


@dataclass(slots=True)
class _Outgoing:
    frame: bytes
    sent_at: float
    attempts: int = 0


class ChannelError(ProtocolError):
    """The peer stopped acknowledging (resend budget exhausted) or sent garbage."""


class Channel:
    def __init__(self, *, send_frame: SendFrame, outgoing_type: str, on_message: OnMessage,
                 on_closed: Callable[[AgentMessage], None] | None = None,
                 on_failed: Callable[[ChannelError], None] | None = None, window: int = DEFAULT_WINDOW,
                 resend_interval: float = RESEND_INTERVAL, max_attempts: int = RESEND_MAX_ATTEMPTS,
                 decode: Callable[[bytes], AgentMessage] = framing.decode) -> None:
        if outgoing_type not in framing.STREAM_TYPES:
            raise ValueError(outgoing_type)
        self._send_frame = send_frame
        # The plugin and the agent validate frames differently (framing.decode / decode_as_agent).
        self._decode = decode
        self.outgoing_type = outgoing_type
        self.incoming_type = (framing.OUTPUT_STREAM_DATA if outgoing_type == framing.INPUT_STREAM_DATA
                              else framing.INPUT_STREAM_DATA)
        self._on_message = on_message
        self._on_closed = on_closed
        self._on_failed = on_failed
        self._window = window
        self._resend_interval = resend_interval
        self._max_attempts = max_attempts
        self.next_seq = 0
        self.expected_seq = 0
        self._unacked: OrderedDict[int, _Outgoing] = OrderedDict()
        self._incoming: dict[int, AgentMessage] = {}
        self._space = asyncio.Event()
        self._space.set()
        self.publishing = asyncio.Event()
        self.publishing.set()
        self.rtt = DEFAULT_RTT
        self.rtt_var = 0.0
        self.rto = DEFAULT_RTO
        self.resent = 0
        self.duplicates = 0
        self.failed: ChannelError | None = None
        self._resend_task: asyncio.Task[None] | None = None
        self._deliver_task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[AgentMessage] = asyncio.Queue()
        self._busy = False

    # ---- outgoing ----
    def start(self) -> None:
        if self._resend_task is None:
            self._resend_task = asyncio.get_running_loop().create_task(self._resend_loop())

    async def stop(self) -> None:
        for task in (self._resend_task, self._deliver_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._resend_task = self._deliver_task = None

    async def send(self, payload_type: int, payload: bytes) -> None:
        """Send one stream message; waits while the window is full or publication is paused."""
        while len(self._unacked) >= self._window or not self.publishing.is_set():
            if self.failed:
                raise self.failed
            self._space.clear()
            await self.publishing.wait()
            if len(self._unacked) >= self._window:
                await self._space.wait()
        if self.failed:
            raise self.failed
        seq = self.next_seq
        self.next_seq += 1
        frame = framing.encode(AgentMessage(message_type=self.outgoing_type, payload=payload,
                                            payload_type=payload_type, sequence_number=seq))
        self._unacked[seq] = _Outgoing(frame, time.monotonic())
        await self._send_frame(frame)

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every sent message is acknowledged (or timeout); True when all were."""
        deadline = time.monotonic() + timeout
        while self._unacked and time.monotonic() < deadline and not self.failed:
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), 0.05)
        return not self._unacked

    def _acked(self, seq: int) -> None:
        item = self._unacked.pop(seq, None)
        if item is None:
            return
        if item.attempts == 0:
            # Karn: only first transmissions give an unambiguous sample.
            sample = time.monotonic() - item.sent_at
            self.rtt_var = 0.75 * self.rtt_var + 0.25 * abs(self.rtt - sample)
            self.rtt = 0.875 * self.rtt + 0.125 * sample
            self.rto = min(MAX_RTO, max(MIN_RTO, self.rtt + max(CLOCK_GRANULARITY, 4 * self.rtt_var)))
        if len(self._unacked) < self._window:
            self._space.set()

    def resend_now(self) -> None:
        """After a new websocket (resume): everything unacknowledged is due at the next resend tick."""
        for item in self._unacked.values():
            item.sent_at = 0.0

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resend_interval)
            if not self.publishing.is_set() or not self._unacked:
                continue
            now = time.monotonic()
            for item in list(self._unacked.values()):
                if now - item.sent_at <= self.rto:
                    continue
                if item.attempts >= self._max_attempts:
                    self.failed = ChannelError(f"peer stopped acknowledging after {item.attempts} resends")
                    self._space.set()
                    self.publishing.set()
                    if self._on_failed is not None:
                        self._on_failed(self.failed)
                    return
                item.attempts += 1
                item.sent_at = now
                self.resent += 1
                try:
                    await self._send_frame(item.frame)
                except Exception:
                    return

    # ---- incoming ----
    async def receive(self, raw: bytes) -> None:
        """Handle one frame from the peer. Raises FramingError on a malformed frame."""
        msg = self._decode(raw)
        mtype = msg.message_type
        if mtype == framing.ACKNOWLEDGE:
            self._acked(framing.acked_sequence(msg))
        elif mtype == self.incoming_type:
            # Delivery may wait (a slow local reader); acks for our own sends must not wait behind it,
            # or both ends can stall with full windows. So stream messages go through a queue.
            self._inbox.put_nowait(msg)
            if self._deliver_task is None and self.failed is None:
                self._deliver_task = asyncio.get_running_loop().create_task(self._deliver_loop())
        elif mtype == framing.PAUSE_PUBLICATION:
            self.publishing.clear()
        elif mtype == framing.START_PUBLICATION:
            self.publishing.set()
        elif mtype == framing.CHANNEL_CLOSED:
            if self._on_closed is not None:
                self._on_closed(msg)
        # Our own outgoing type echoed back is ignored, as the plugin does for unknown kinds.

    async def _deliver_loop(self) -> None:
        while True:
            msg = await self._inbox.get()
            try:
                await self._receive_stream(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed = ChannelError(f"handling {msg.message_type} seq {msg.sequence_number}: {exc}")
                self._space.set()
                self.publishing.set()
                if self._on_failed is not None:
                    self._on_failed(self.failed)
                return

    async def settle(self) -> None:
        """Wait until every received stream message has been handled (tests, orderly shutdown)."""
        while not self._inbox.empty() or self._busy:
            await asyncio.sleep(0.001)

    async def _ack(self, msg: AgentMessage) -> None:
        await self._send_frame(framing.encode(framing.ack_for(msg)))

    async def _receive_stream(self, msg: AgentMessage) -> None:
        self._busy = True
        try:
            await self._receive_one(msg)
        finally:
            self._busy = False

    async def _receive_one(self, msg: AgentMessage) -> None:
        seq = msg.sequence_number
        if seq < self.expected_seq or seq in self._incoming:
            self.duplicates += 1
            await self._ack(msg)
            return
        if seq > self.expected_seq:
            if len(self._incoming) < INCOMING_CAPACITY:
                self._incoming[seq] = msg
                await self._ack(msg)
            return
        if msg.payload_type in _ACK_BEFORE_HANDLING:
            await self._ack(msg)
            await self._on_message(msg)
        else:
            # Data is acknowledged once handled, so a stalled consumer holds back the sender's window.
            await self._on_message(msg)
            await self._ack(msg)
        self.expected_seq += 1
        while (nxt := self._incoming.pop(self.expected_seq, None)) is not None:
            await self._on_message(nxt)
            self.expected_seq += 1
