"""Session Manager agent-message framing: pure functions, bytes in / bytes out.

Layout learnt from aws/session-manager-plugin `src/message` (our own code): a 120-byte header in
network byte order, then the payload.

    offset size field
         0    4 HeaderLength   (uint32, 116 as everyone sends it: the header up to, not including,
                                   PayloadLength; the agent takes the payload from HeaderLength + 4)
         4   32 MessageType    (UTF-8, right-padded with spaces)
        36    4 SchemaVersion  (uint32)
        40    8 CreatedDate    (uint64, epoch milliseconds)
        48    8 SequenceNumber (int64)
        56    8 Flags          (uint64)
        64   16 MessageId      (UUID, the two 8-byte halves swapped: bytes 8..15 first, then 0..7)
        80   32 PayloadDigest  (SHA-256 of the payload)
       112    4 PayloadType    (uint32)
       116    4 PayloadLength  (uint32)
       120    n Payload
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ops.ssm.errors import ProtocolError

HEADER_LENGTH = 116
PAYLOAD_OFFSET = HEADER_LENGTH + 4
MESSAGE_TYPE_LENGTH = 32
_HEADER = struct.Struct("!I32sIQqQ16s32sII")
assert _HEADER.size == PAYLOAD_OFFSET

# Message types (the 32-byte MessageType field).
INPUT_STREAM_DATA = "input_stream_data"
OUTPUT_STREAM_DATA = "output_stream_data"
ACKNOWLEDGE = "acknowledge"
CHANNEL_CLOSED = "channel_closed"
START_PUBLICATION = "start_publication"
PAUSE_PUBLICATION = "pause_publication"
MESSAGE_TYPES = frozenset(
    {INPUT_STREAM_DATA, OUTPUT_STREAM_DATA, ACKNOWLEDGE, CHANNEL_CLOSED, START_PUBLICATION, PAUSE_PUBLICATION}
)
STREAM_TYPES = frozenset({INPUT_STREAM_DATA, OUTPUT_STREAM_DATA})

# Acks are sent with Flags=3 (SYN|FIN: a one-message stream), as the plugin does.
ACK_FLAGS = 3


class PayloadType(enum.IntEnum):
    UNDEFINED = 0
    OUTPUT = 1
    ERROR = 2
    SIZE = 3
    PARAMETER = 4
    HANDSHAKE_REQUEST = 5
    HANDSHAKE_RESPONSE = 6
    HANDSHAKE_COMPLETE = 7
    ENC_CHALLENGE_REQUEST = 8
    ENC_CHALLENGE_RESPONSE = 9
    FLAG = 10
    STDERR = 11
    EXIT_CODE = 12


class Flag(enum.IntEnum):
    """Payload of a FLAG message: a big-endian uint32."""

    DISCONNECT_TO_PORT = 1
    TERMINATE_SESSION = 2
    CONNECT_TO_PORT_ERROR = 3


class FramingError(ProtocolError):
    """A data-channel frame is malformed (truncated, bad digest, unknown type)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Session Manager frame rejected: {message}")


@dataclass(slots=True)
class AgentMessage:
    message_type: str
    payload: bytes = b""
    payload_type: int = PayloadType.UNDEFINED
    sequence_number: int = 0
    flags: int = 0
    schema_version: int = 1
    created_date: int = field(default_factory=lambda: int(time.time() * 1000))
    message_id: uuid.UUID = field(default_factory=uuid.uuid4)


def uuid_to_wire(value: uuid.UUID) -> bytes:
    raw = value.bytes
    return raw[8:] + raw[:8]


def uuid_from_wire(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=raw[8:] + raw[:8])


def encode(msg: AgentMessage) -> bytes:
    mtype = msg.message_type.encode()
    if len(mtype) > MESSAGE_TYPE_LENGTH:
        raise FramingError(f"message type {msg.message_type!r} longer than {MESSAGE_TYPE_LENGTH} bytes")
    payload = msg.payload
    header = _HEADER.pack(
        HEADER_LENGTH,
        mtype.ljust(MESSAGE_TYPE_LENGTH, b" "),
        msg.schema_version,
        msg.created_date,
        msg.sequence_number,
        msg.flags,
        uuid_to_wire(msg.message_id),
        hashlib.sha256(payload).digest(),
        int(msg.payload_type),
        len(payload),
    )
    return header + payload


def decode(data: bytes, *, verify_digest: bool = True) -> AgentMessage:
    """Parse and validate one frame as the plugin does. Raises FramingError, never anything else, on bad input."""
    if len(data) < PAYLOAD_OFFSET:
        raise FramingError(f"truncated frame: {len(data)} bytes, the header alone is {PAYLOAD_OFFSET}")
    (hlen, mtype_raw, schema, created, seq, flags, mid, digest, ptype, plen) = _HEADER.unpack_from(data)
    if hlen != HEADER_LENGTH:
        raise FramingError(f"header length {hlen}, expected {HEADER_LENGTH}")
    try:
        mtype = mtype_raw.strip(b"\x00").decode().strip()
    except UnicodeDecodeError:
        raise FramingError("message type is not UTF-8") from None
    if mtype not in MESSAGE_TYPES:
        raise FramingError(f"unknown message type {mtype!r}")
    payload = data[PAYLOAD_OFFSET:]
    if len(payload) != plen:
        raise FramingError(f"payload length field says {plen} bytes, frame carries {len(payload)}")
    # Like the plugin: publication control messages are not digest-checked; empty payloads neither.
    if (verify_digest and plen and mtype not in (START_PUBLICATION, PAUSE_PUBLICATION)
            and hashlib.sha256(payload).digest() != digest):
        raise FramingError(f"payload digest mismatch on {mtype} seq {seq}")
    return AgentMessage(
        message_type=mtype, payload=bytes(payload), payload_type=ptype, sequence_number=seq, flags=flags,
        schema_version=schema, created_date=created, message_id=uuid_from_wire(mid),
    )


def decode_as_agent(data: bytes) -> AgentMessage:
    """Parse one frame as amazon-ssm-agent does (agent/session/contracts/agentmessage.go).

    Its `Deserialize` reads the payload from HeaderLength + 4 on and its `Validate` checks only that
    HeaderLength, MessageType and CreatedDate are set: no payload digest, no payload-length check, and
    an unknown message type is left to the handler (which ignores it). Being stricter than that here
    would let a client that the real agent accepts fail only in production, or the reverse.
    """
    if len(data) < PAYLOAD_OFFSET:
        raise FramingError(f"truncated frame: {len(data)} bytes, the header alone is {PAYLOAD_OFFSET}")
    (hlen, mtype_raw, schema, created, seq, flags, mid, _digest, ptype, _plen) = _HEADER.unpack_from(data)
    mtype = mtype_raw.strip(b"\x00").decode(errors="replace").strip()
    if hlen == 0:
        raise FramingError("HeaderLength cannot be zero")
    if not mtype:
        raise FramingError("MessageType is missing")
    if created == 0:
        raise FramingError("CreatedDate is missing")
    if hlen + 4 > len(data):
        raise FramingError(f"header length {hlen} beyond the frame's {len(data)} bytes")
    return AgentMessage(
        message_type=mtype, payload=bytes(data[hlen + 4:]), payload_type=ptype, sequence_number=seq, flags=flags,
        schema_version=schema, created_date=created, message_id=uuid_from_wire(mid),
    )


# ---- payload helpers (JSON shapes from the plugin's message package) ----

def ack_for(msg: AgentMessage) -> AgentMessage:
    content = {
        "AcknowledgedMessageType": msg.message_type,
        "AcknowledgedMessageId": str(msg.message_id),
        "AcknowledgedMessageSequenceNumber": msg.sequence_number,
        "IsSequentialMessage": True,
    }
    return AgentMessage(message_type=ACKNOWLEDGE, payload=json.dumps(content).encode(), flags=ACK_FLAGS)


def parse_json(msg: AgentMessage) -> dict[str, Any]:
    try:
        value = json.loads(msg.payload)
    except (ValueError, UnicodeDecodeError):
        raise FramingError(f"{msg.message_type} payload is not JSON") from None
    if not isinstance(value, dict):
        raise FramingError(f"{msg.message_type} payload is not a JSON object")
    return value


def acked_sequence(msg: AgentMessage) -> int:
    seq = parse_json(msg).get("AcknowledgedMessageSequenceNumber")
    if not isinstance(seq, int):
        raise FramingError("acknowledge without AcknowledgedMessageSequenceNumber")
    return seq


def flag_payload(flag: Flag) -> bytes:
    return struct.pack("!I", int(flag))


def parse_flag(payload: bytes) -> int:
    if len(payload) != 4:
        raise FramingError(f"flag payload of {len(payload)} bytes, expected 4")
    value: int = struct.unpack("!I", payload)[0]
    return value


def size_payload(*, cols: int, rows: int) -> bytes:
    return json.dumps({"cols": cols, "rows": rows}).encode()


def channel_closed(*, session_id: str, output: str = "", destination_id: str = "") -> AgentMessage:
    mid = uuid.uuid4()
    now = int(time.time() * 1000)
    body = {
        "MessageId": str(mid), "CreatedDate": str(now), "DestinationId": destination_id, "SessionId": session_id,
        "MessageType": CHANNEL_CLOSED, "SchemaVersion": 1, "Output": output,
    }
    return AgentMessage(message_type=CHANNEL_CLOSED, payload=json.dumps(body).encode(), message_id=mid,
                        created_date=now)


def open_data_channel(*, token: str, client_id: str, client_version: str, request_id: str | None = None) -> str:
    """The first (text) websocket message: authenticates the client to the stream."""
    return json.dumps({
        "MessageSchemaVersion": "1.0",
        "RequestId": request_id or str(uuid.uuid4()),
        "TokenValue": token,
        "ClientId": client_id,
        "ClientVersion": client_version,
    })


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def version_greater(version: str, than: str) -> bool:
    """Strictly greater, comparing dotted integers; unparsable versions are never greater (plugin semantics)."""
    mine, other = version_tuple(version), version_tuple(than)
    if not mine or len(mine) != len(other):
        return False
    return mine > other
