"""Progress lines for long waits: the user is watching, so every line is flushed at once."""

from __future__ import annotations

from typing import TextIO


def say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()
