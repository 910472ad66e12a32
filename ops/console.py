"""What long operations show while they run: flushed lines, a live status line, plain lines for logs.

On a terminal a wait is one live line (spinner, what, current value, elapsed seconds) redrawn by
`rich`, replaced by one result line at the end. Anywhere else (CI logs, pipes, files) the same wait
prints plain timestamped lines, only when the value changes or every `plain_every` seconds, and
never an escape code. `NO_COLOR` (https://no-color.org) turns colour off even on a terminal; rich
implements both rules, so nothing here writes escape codes by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

Clock = Callable[[], float]
PLAIN_EVERY = 15.0
PLAIN_WIDTH = 120


def say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def console(out: TextIO) -> Console:
    """A rich console on `out`: live rendering and colour only on a terminal, colour never with NO_COLOR."""
    terminal = is_terminal(out)
    # rich reads NO_COLOR itself; TERM=dumb (emacs shells, some CI) gets no cursor movement either.
    dumb = os.environ.get("TERM") == "dumb"
    # Logs have no width: wrap tables at 120 columns rather than rich's 80 (COLUMNS still wins).
    width = None if terminal or os.environ.get("COLUMNS") else PLAIN_WIDTH
    return Console(file=out, force_terminal=terminal and not dumb, no_color=None, highlight=False,
                   emoji=False, soft_wrap=False, width=width)


def stamp(wall: Clock = time.time) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall()))


class Status:
    """A wait or a long step the user watches: `update(text)` while it runs, `done(text)` at the end.

    Use as a context manager. `clock` (monotonic) gives the elapsed time, `wall` the timestamps of
    plain lines: both are passed in so the plain view can be checked without waiting.
    """

    def __init__(self, out: TextIO, what: str, *, clock: Clock = time.monotonic, wall: Clock = time.time,
                 plain_every: float = PLAIN_EVERY, quiet_plain: bool = False) -> None:
        self.out = out
        self.what = what
        self.clock = clock
        self.wall = wall
        self.plain_every = plain_every
        # quiet_plain: in the plain view, print nothing unless the step turns out to be slow.
        self.quiet_plain = quiet_plain
        self.console = console(out)
        self.live_view = self.console.is_terminal
        self.text = ""
        self.started = clock()
        self._last_plain_text: str | None = None
        self._last_plain_at = self.started
        self._spinner = Spinner("dots", text="")
        self._live: Live | None = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self) -> str:
        body = f"{self.what}: {self.text}" if self.text else self.what
        return f"{body} ({self.elapsed:.0f} s)"

    def _render(self) -> Spinner:
        self._spinner.update(text=Text(self.line()))
        return self._spinner

    def __enter__(self) -> Status:
        self.started = self.clock()
        self._last_plain_at = self.started
        if self.live_view:
            self._live = Live(console=self.console, get_renderable=self._render, refresh_per_second=4,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def update(self, text: str) -> None:
        self.text = text
        if self._live is not None:
            self._live.refresh()
            return
        now = self.clock()
        changed = text != self._last_plain_text
        due = now - self._last_plain_at >= self.plain_every
        if (changed and not self.quiet_plain) or due:
            self._plain(self.line())
            self._last_plain_text = text
            self._last_plain_at = now

    def print(self, text: str, *, style: str = "") -> None:
        """A line that stays (above the live line on a terminal)."""
        if self.console.is_terminal:
            self.console.print(Text(text, style=style))
        else:
            say(self.out, text)

    def done(self, text: str, *, style: str = "") -> None:
        """Stop the live line and print the one result line."""
        self.stop()
        self.print(text, style=style)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _plain(self, text: str) -> None:
        say(self.out, f"{stamp(self.wall)} {text}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
