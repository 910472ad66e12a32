"""The PostgreSQL start-up phase, sans-I/O: bytes in, messages out, bytes out.

Only what an authenticating proxy and the sandbox's RDS front need before they splice bytes: the
untyped first packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), the typed messages of
authentication (Authentication*, PasswordMessage, ErrorResponse, ParameterStatus, BackendKeyData,
ReadyForQuery, NoticeResponse, NegotiateProtocolVersion) and their encoders. After start-up the bytes
pass through untouched, so nothing here parses queries.

Every malformed input raises `ProtocolError` and nothing else (a fuzz test holds us to that): a peer
that sends garbage gets an ErrorResponse, never a traceback.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 196608
PROTOCOL_3_2 = 196610
# PostgreSQL's own limit for start-up packets (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_LENGTH = 10000
# Authentication-phase messages are small; a SASL message or an IAM token (~1.5 KB) fits easily.
MAX_MESSAGE_LENGTH = 1 << 20

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# SQLSTATE codes we send ourselves.
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"  # noqa: S105 (a SQLSTATE, not a password)
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
CANNOT_CONNECT_NOW = "57P03"


class ProtocolError(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol we expect at this point."""


# ---- untyped first packets (frontend -> backend) --------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    # 4 bytes up to protocol 3.1; protocol 3.2 (PostgreSQL 18) allows up to 256 bytes.
    secret: bytes


@dataclass(frozen=True)
class StartupMessage:
    protocol: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database", "") or self.user


FirstPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


# ---- typed messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One typed message: its type byte and its body (without the length)."""

    kind: bytes
    body: bytes


@dataclass(frozen=True)
class Authentication:
    code: int
    data: bytes = b""


@dataclass(frozen=True)
class ErrorFields:
    """ErrorResponse / NoticeResponse fields by their one-letter code (S, V, C, M, D, H...)."""

    fields: dict[str, str]

    @property
    def code(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def hint(self) -> str:
        return self.fields.get("H", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V", self.fields.get("S", ""))


def _split_cstrings(data: bytes, *, what: str) -> list[str]:
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: not NUL-terminated")
    try:
        return [part.decode("utf-8") for part in data[:-1].split(b"\0")]
    except UnicodeDecodeError:
        raise ProtocolError(f"{what}: not UTF-8") from None


def decode_first(packet: bytes) -> FirstPacket:
    """One complete untyped packet (length included) as the frontend's first message."""
    if len(packet) < 8:
        raise ProtocolError("start-up packet too short")
    (length, code) = struct.unpack("!ii", packet[:8])
    if length != len(packet):
        raise ProtocolError("start-up packet length does not match")
    if code == SSL_REQUEST_CODE and length == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and length == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if not 12 <= length <= 8 + 4 + 256:
            raise ProtocolError("CancelRequest of a wrong length")
        (pid,) = struct.unpack("!i", packet[8:12])
        return CancelRequest(pid=pid, secret=packet[12:])
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    parts = _split_cstrings(packet[8:], what="StartupMessage")
    # The list ends with an empty name (the terminator); the pairs come before it.
    if not parts or parts[-1] != "" or len(parts) % 2 != 1:
        raise ProtocolError("StartupMessage: parameters are not name/value pairs")
    params: dict[str, str] = {}
    for name, value in zip(parts[:-1:2], parts[1:-1:2], strict=True):
        if not name:
            raise ProtocolError("StartupMessage: empty parameter name")
        params[name] = value
    if "user" not in params or not params["user"]:
        raise ProtocolError("StartupMessage without a user")
    return StartupMessage(protocol=code, params=params)


def decode_authentication(msg: Message) -> Authentication:
    if msg.kind != b"R" or len(msg.body) < 4:
        raise ProtocolError("not an Authentication message")
    (code,) = struct.unpack("!i", msg.body[:4])
    return Authentication(code=code, data=msg.body[4:])


def decode_error(msg: Message) -> ErrorFields:
    if msg.kind not in (b"E", b"N"):
        raise ProtocolError("not an ErrorResponse or NoticeResponse")
    body = msg.body
    if not body.endswith(b"\0"):
        raise ProtocolError("ErrorResponse: not terminated")
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) - 1:
        kind = chr(body[pos])
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise ProtocolError("ErrorResponse: field not terminated")
        try:
            fields[kind] = body[pos + 1:end].decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise ProtocolError("ErrorResponse: not UTF-8") from None
        pos = end + 1
    return ErrorFields(fields)


def decode_password(msg: Message) -> str:
    if msg.kind != b"p":
        raise ProtocolError("expected a PasswordMessage")
    parts = _split_cstrings(msg.body, what="PasswordMessage")
    if len(parts) != 1:
        raise ProtocolError("PasswordMessage: more than one string")
    return parts[0]


def decode_backend_key(msg: Message) -> tuple[int, bytes]:
    if msg.kind != b"K" or len(msg.body) < 8:
        raise ProtocolError("not a BackendKeyData message")
    (pid,) = struct.unpack("!i", msg.body[:4])
    return pid, msg.body[4:]


# ---- incremental framing ----------------------------------------------------------------------


class Reader:
    """Frames bytes into packets. `first=True`: the next packet is untyped (a start-up packet); after
    SSLRequest/GSSENCRequest the caller keeps reading untyped packets (`expect_first()`)."""

    def __init__(self, *, first: bool = False) -> None:
        self._buf = bytearray()
        self._first = first

    def expect_first(self) -> None:
        self._first = True

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> bytes:
        """Bytes received but not yet framed (handed on as they are when the proxy starts splicing)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def next_first(self) -> FirstPacket | None:
        if not self._first:
            raise ProtocolError("a typed message was expected")
        if len(self._buf) < 4:
            return None
        (length,) = struct.unpack("!i", self._buf[:4])
        if not 8 <= length <= MAX_STARTUP_LENGTH:
            raise ProtocolError("invalid start-up packet length")
        if len(self._buf) < length:
            return None
        packet = bytes(self._buf[:length])
        del self._buf[:length]
        decoded = decode_first(packet)
        self._first = isinstance(decoded, SSLRequest | GSSENCRequest)
        return decoded

    def next_message(self) -> Message | None:
        if self._first:
            raise ProtocolError("a start-up packet was expected")
        if len(self._buf) < 5:
            return None
        kind = bytes(self._buf[:1])
        (length,) = struct.unpack("!i", self._buf[1:5])
        if not 4 <= length <= MAX_MESSAGE_LENGTH:
            raise ProtocolError(f"invalid length for message {kind!r}")
        if len(self._buf) < 1 + length:
            return None
        body = bytes(self._buf[5:1 + length])
        del self._buf[:1 + length]
        return Message(kind=kind, body=body)


# ---- encoders ---------------------------------------------------------------------------------


def _typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise ProtocolError("a protocol string cannot contain NUL")
    return raw + b"\0"


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, secret: bytes) -> bytes:
    return struct.pack("!iii", 12 + len(secret), CANCEL_REQUEST_CODE, pid) + secret


def startup_message(params: dict[str, str], *, protocol: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!i", protocol) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def password_message(password: str) -> bytes:
    return _typed(b"p", _cstr(password))


def authentication(code: int, data: bytes = b"") -> bytes:
    return _typed(b"R", struct.pack("!i", code) + data)


def backend_key(pid: int, secret: bytes) -> bytes:
    return _typed(b"K", struct.pack("!i", pid) + secret)


def parameter_status(name: str, value: str) -> bytes:
    return _typed(b"S", _cstr(name) + _cstr(value))


def ready_for_query(status: bytes = b"I") -> bytes:
    return _typed(b"Z", status)


def error_response(message: str, *, code: str = INVALID_AUTHORIZATION, hint: str = "", detail: str = "",
                   severity: str = "FATAL") -> bytes:
    fields = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(code), b"M" + _cstr(message)]
    if detail:
        fields.append(b"D" + _cstr(detail))
    if hint:
        fields.append(b"H" + _cstr(hint))
    return _typed(b"E", b"".join(fields) + b"\0")


def encode_message(msg: Message) -> bytes:
    return _typed(msg.kind, msg.body)
