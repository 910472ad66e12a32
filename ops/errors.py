"""Exceptions raised by `ops`. `tasks.py` turns them into `invoke.Exit("...; next: <command>")`.

Each error carries the message (what is wrong, with the fix) and optionally the next command to
type, so the CLI layer can stay a thin translation.
"""

from __future__ import annotations


class OpsError(Exception):
    """Base class: a failure the user can act on. Never carries a secret."""

    def __init__(self, message: str, *, next_step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step

    def __str__(self) -> str:
        return self.message


class ConfigError(OpsError):
    """An environment file is missing or invalid."""


class ToolMissingError(OpsError):
    """A local tool (terraform, node, the provider mirror, the plugin) is missing or too old."""


class AccountMismatchError(OpsError):
    """The caller's AWS account is not the environment's."""


class CredentialsError(OpsError):
    """No, invalid or expired AWS credentials."""


class CommandFailedError(OpsError):
    """A child command (terraform, alembic, psql) exited non-zero."""

    def __init__(self, message: str, *, returncode: int, next_step: str = "") -> None:
        super().__init__(message, next_step=next_step)
        self.returncode = returncode


class AbortedError(OpsError):
    """The user declined a confirmation or pressed Ctrl-C."""


class GuardrailError(OpsError):
    """A guardrail rule rejected the synthesized infrastructure."""
