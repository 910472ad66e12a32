"""One confirmation for every changing task: an answer typed on a terminal, or `--yes`.

The caller checks the AWS account first (ops.aws.check_account) and passes the account it found, so the
question names the account that will really change. A piped answer (`echo y | invoke deploy`) is refused:
it confirms nothing anyone read, and used to apply on some tasks while others refused it. Automation
says so explicitly with `--yes`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ops.config import EnvConfig
from ops.errors import AbortedError

Ask = Callable[[str], str]


def require_terminal(what: str = "this change") -> None:
    """Refuse at once (before any AWS call) when no terminal can answer the confirmation."""
    if not sys.stdin.isatty():
        raise AbortedError(f"{what} needs confirmation and stdin is not a terminal (a piped answer is not "
                           "accepted); nothing was changed",
                           next_step="rerun in a terminal, or pass --yes for automation")


def terminal_answer(prompt: str) -> str:
    """One line typed on the terminal; anything else (a pipe, a file, a closed stdin) is a refusal."""
    require_terminal()
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not sys.stderr.isatty():
        # The answer was echoed on the terminal, not into our captured stderr: end the prompt's line there.
        sys.stderr.write("\n")
    if not line:
        raise AbortedError("no answer (stdin is closed); nothing was changed", next_step="pass --yes for automation")
    return line.strip()


def confirm(cfg: EnvConfig, *, action: str, account: str, what: str, yes: bool = False, ask: Ask | None = None,
            type_name: bool = False) -> None:
    """Production (or `type_name`, e.g. a downgrade): type the environment name; elsewhere y/N.

    `account` is the one the caller's credentials were checked against. AbortedError naming `what` on
    anything but the expected answer.
    """
    if yes:
        return
    answer_with = ask or terminal_answer
    if cfg.is_prod or type_name:
        answer = answer_with(f"\n{action} {cfg.name} in AWS account {account}? Type the environment name "
                             f"({cfg.name}) to continue: ")
        ok = answer == cfg.name
    else:
        answer = answer_with(f"\n{action} {cfg.name} in AWS account {account}? [y/N] ")
        ok = answer.lower() in ("y", "yes")
    if not ok:
        raise AbortedError(f"{what} on {cfg.name} cancelled; nothing was changed")
