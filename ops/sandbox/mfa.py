"""The sandbox engineer's authenticator app: TOTP codes (RFC 6238: SHA-1, 30 s, 6 digits, as AWS virtual MFA
devices use) from the seed of the virtual MFA device `sandbox up` enables for them. The emulator does not
check codes (ops/sandbox/moto_iam.mfa_context checks the device and the shape); a real code keeps the
sandbox's AssumeRole call exactly the call made on AWS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time

STEP_SECONDS = 30


def code(seed_base32: str, *, now: float | None = None) -> str:
    counter = int((time.time() if now is None else now) // STEP_SECONDS)
    key = base64.b32decode(seed_base32 + "=" * (-len(seed_base32) % 8), casefold=True)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"
