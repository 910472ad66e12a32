"""User input that ends up in AWS records, and AWS data that ends up on a terminal.

A `--reason` is stored by Session Manager and CloudTrail and printed later by `invoke sessions` and
`invoke audit`; a newline plus ANSI codes in it forged a whole row there. So a reason is refused if it
holds any control character (C0, DEL, C1: newline, ESC, CSI...), and everything printed from AWS data goes
through `terminal_safe` anyway, since others can start sessions without bastionless.
"""

from __future__ import annotations

import re

from ops.errors import OpsError

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_REASON = 256  # StartSession's Reason limit


class InputError(OpsError):
    pass


def check_reason(reason: str) -> str:
    """The reason unchanged, or InputError naming what is wrong with it."""
    bad = _CONTROL_RE.search(reason)
    if bad is not None:
        raise InputError(f"--reason contains a control character ({bad.group()!r}: newlines and terminal escape "
                         "sequences would forge rows in `invoke sessions` and `invoke audit`)",
                         next_step="use one line of plain text, e.g. --reason \"INC-1234: slow queries\"")
    if len(reason) > MAX_REASON:
        raise InputError(f"--reason is longer than {MAX_REASON} characters (the StartSession limit)",
                         next_step="shorten it; put details in the ticket it names")
    return reason


def local_port(text: str) -> int | None:
    """`--local-port`: empty for the env's default, else 0 (any free port) to 65535."""
    if text == "":
        return None
    try:
        port = int(text)
    except ValueError:
        raise InputError(f"--local-port {text!r} is not a number", next_step="use 0 (any free port) to 65535") from None
    if not 0 <= port <= 65535:
        raise InputError(f"--local-port {port} is not a TCP port", next_step="use 0 (any free port) to 65535")
    return port


def terminal_safe(text: str) -> str:
    """Control characters shown as escapes (\\x1b, \\n), so data from AWS cannot move the cursor or add rows."""
    return _CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
