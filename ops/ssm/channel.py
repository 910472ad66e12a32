"""The data channel on asyncio: `ops.ssm.core.ChannelCore` (the protocol, without I/O) plus the tasks,
clock and waiting around it, shared by the client and the sandbox agent.

Frames go out through `send_frame` and come in through `receive`; stream messages are handed to
`on_message` in order by a task of their own, so acknowledgements of our own sends never wait behind a
slow local reader (both ends could stall with full windows otherwise). The core decides what is sent,
acknowledged, resent and delivered; this class only does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from ops.ssm import framing
from ops.ssm.core import (
    DEFAULT_WINDOW,
    RESEND_MAX_ATTEMPTS,
    ChannelCore,
    ChannelError,
    Deliver,
    PeerClosed,
    PublicationChanged,
    State,
    Transmit,
)
from ops.ssm.framing import AgentMessage

__all__ = ["Channel", "ChannelError"]

SendFrame = Callable[[bytes], Awaitable[None]]
OnMessage = Callable[[AgentMessage], Awaitable[None]]

RESEND_INTERVAL = 0.1


class Channel:
    def __init__(self, *, send_frame: SendFrame, outgoing_type: str, on_message: OnMessage,
                 on_closed: Callable[[AgentMessage], None] | None = None,
                 on_failed: Callable[[ChannelError], None] | None = None, window: int = DEFAULT_WINDOW,
                 resend_interval: float = RESEND_INTERVAL, max_attempts: int = RESEND_MAX_ATTEMPTS,
                 decode: Callable[[bytes], AgentMessage] = framing.decode) -> None:
        self.core = ChannelCore(outgoing_type=outgoing_type, window=window, max_attempts=max_attempts,
                                decode=decode)
        self._send_frame = send_frame
        self._on_message = on_message
        self._on_closed = on_closed
        self._on_failed = on_failed
        self._resend_interval = resend_interval
        self._space = asyncio.Event()
        self._space.set()
        self.publishing = asyncio.Event()
        self.publishing.set()
        self._resend_task: asyncio.Task[None] | None = None
        self._deliver_task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Deliver] = asyncio.Queue()
        self._busy = False

    # The core's figures, under the names the client, the agent and the benches read.
    @property
    def outgoing_type(self) -> str:
        return self.core.outgoing_type

    @property
    def incoming_type(self) -> str:
        return self.core.incoming_type

    @property
    def next_seq(self) -> int:
        return self.core.next_seq

    @property
    def expected_seq(self) -> int:
        return self.core.expected_seq

    @property
    def rtt(self) -> float:
        return self.core.rtt

    @property
    def rto(self) -> float:
        return self.core.rto

    @property
    def resent(self) -> int:
        return self.core.resent

    @property
    def duplicates(self) -> int:
        return self.core.duplicates

    @property
    def failed(self) -> ChannelError | None:
        return self.core.failed

    @property
    def unacked(self) -> int:
        return self.core.unacked

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
        core = self.core
        while not core.can_send() and core.failed is None and core.state is not State.CLOSED:
            self._space.clear()
            await self.publishing.wait()
            if core.unacked >= core.window:
                await self._space.wait()
        frame = core.send(payload_type, payload, time.monotonic())  # raises when failed or closed
        await self._send_frame(frame)

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every sent message is acknowledged (or timeout); True when all were."""
        deadline = time.monotonic() + timeout
        while self.core.unacked and time.monotonic() < deadline and not self.core.failed:
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), 0.05)
        return not self.core.unacked

    def resend_now(self) -> None:
        """After a new websocket (resume): everything unacknowledged is due at the next resend tick."""
        self.core.resend_now()

    def _fail(self, error: ChannelError) -> None:
        self.core.fail(error)
        # Wake every waiting sender: it raises the failure.
        self._space.set()
        self.publishing.set()
        if self._on_failed is not None:
            self._on_failed(error)

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resend_interval)
            frames = self.core.timer(time.monotonic())
            if self.core.failed is not None:
                self._fail(self.core.failed)
                return
            for frame in frames:
                try:
                    await self._send_frame(frame)
                except Exception:
                    return

    async def _ack(self, frame: bytes) -> None:
        # An acknowledgement that cannot go out costs the peer a resend, nothing more; and once the peer has
        # closed the channel (TerminateSession while its last messages were being handled) there is nobody
        # to acknowledge. Failing the channel for it turned an orderly end into a "dropped" session.
        with contextlib.suppress(Exception):
            await self._send_frame(frame)

    # ---- incoming ----
    async def receive(self, raw: bytes) -> None:
        """Handle one frame from the peer. Raises FramingError on a malformed frame."""
        events = self.core.receive(raw, time.monotonic())
        if self.core.unacked < self.core.window:
            self._space.set()
        for event in events:
            if isinstance(event, Transmit):
                await self._ack(event.frame)
            elif isinstance(event, Deliver):
                self._inbox.put_nowait(event)
                if self._deliver_task is None and self.core.failed is None:
                    self._deliver_task = asyncio.get_running_loop().create_task(self._deliver_loop())
            elif isinstance(event, PublicationChanged):
                if event.publishing:
                    self.publishing.set()
                else:
                    self.publishing.clear()
            elif isinstance(event, PeerClosed) and self._on_closed is not None:
                self._on_closed(event.message)

    async def _deliver_loop(self) -> None:
        while True:
            event = await self._inbox.get()
            self._busy = True
            try:
                if event.ack is not None and event.ack_first:
                    await self._ack(event.ack)
                await self._on_message(event.message)
                if event.ack is not None and not event.ack_first:
                    await self._ack(event.ack)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                msg = event.message
                self._fail(ChannelError(f"handling {msg.message_type} seq {msg.sequence_number}: {exc}"))
                return
            finally:
                self._busy = False

    async def settle(self) -> None:
        """Wait until every received stream message has been handled (tests, orderly shutdown)."""
        while not self._inbox.empty() or self._busy:
            await asyncio.sleep(0.001)
