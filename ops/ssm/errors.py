"""What the Session Manager protocol code raises. Not OpsError on purpose: these say what happened on
the data channel; the command line (cli/_common.py) decides the words a user sees and the next step.
"""

from __future__ import annotations


class SessionError(Exception):
    """Base class of everything ops.ssm raises about a session."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProtocolError(SessionError):
    """The peer sent something the protocol does not allow (a bad frame, smux, a failed decryption)."""


class ChannelClosed(SessionError):
    """The data channel ended: the agent closed it, or the websocket dropped (`dropped=True`)."""

    def __init__(self, message: str, *, dropped: bool) -> None:
        super().__init__(message)
        self.dropped = dropped


class EncryptionRequired(SessionError):
    """The session wants KMS encryption and this client was given no KMS client or target."""


class KmsRefused(SessionError):
    """KMS would not generate the session's data key (usually: no kms:GenerateDataKey on the key)."""

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class WrongSessionType(SessionError):
    """A port session was expected and the agent started another kind."""
