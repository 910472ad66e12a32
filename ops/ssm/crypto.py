"""KMS session encryption of the data channel (when Session Manager preferences name a KMS key).

Scheme as the plugin and agent implement it (our code): the client asks KMS for a 64-byte data key
under the encryption context {aws:ssm:SessionId, aws:ssm:TargetId[, aws:ssm:RandomChallenge]} and
hands the ciphertext blob to the agent in the handshake response. The first 32 bytes key the
agent-to-client direction, the last 32 the client-to-agent one. Each encrypted payload is a
12-byte random nonce followed by the AES-256-GCM ciphertext and tag.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from ops.ssm.errors import ProtocolError

NONCE_SIZE = 12
DATA_KEY_BYTES = 64


class EncryptionError(ProtocolError):
    pass


def _aesgcm(key: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - depends on the install
        raise EncryptionError("KMS session encryption needs the `cryptography` package (pip install "
                              "cryptography)") from None
    return AESGCM(key)


class SessionCipher:
    """One direction pair of AES-GCM keys. `agent_side` swaps which half encrypts."""

    def __init__(self, plaintext_key: bytes, *, agent_side: bool = False) -> None:
        if len(plaintext_key) != DATA_KEY_BYTES:
            raise EncryptionError(f"data key of {len(plaintext_key)} bytes, expected {DATA_KEY_BYTES}")
        to_client, to_agent = plaintext_key[:32], plaintext_key[32:]
        enc, dec = (to_client, to_agent) if agent_side else (to_agent, to_client)
        self._enc = _aesgcm(enc)
        self._dec = _aesgcm(dec)

    def encrypt(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        ciphertext: bytes = self._enc.encrypt(nonce, data, None)
        return nonce + ciphertext

    def decrypt(self, data: bytes) -> bytes:
        if len(data) < NONCE_SIZE + 16:
            raise EncryptionError("encrypted payload too short")
        try:
            plaintext: bytes = self._dec.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
        except Exception:
            raise EncryptionError("payload failed AES-GCM authentication") from None
        return plaintext


def encryption_context(*, session_id: str, target_id: str, challenge: str | None) -> dict[str, str]:
    context = {"aws:ssm:SessionId": session_id, "aws:ssm:TargetId": target_id}
    if challenge:
        context["aws:ssm:RandomChallenge"] = challenge
    return context


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise EncryptionError("expected base64 bytes in the handshake")
    return base64.b64decode(value)
