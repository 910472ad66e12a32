"""Agent-message framing: field-by-field vectors following the plugin's layout, and rejections."""

from __future__ import annotations

import hashlib
import struct
import uuid

import pytest

from ops.ssm import framing, smux
from ops.ssm.framing import AgentMessage, FramingError, PayloadType

MESSAGE_ID = uuid.UUID("dd01e56b-ff48-483e-a508-b5f073f31b16")
CREATED = 1503434274948


def sample(**overrides: object) -> AgentMessage:
    fields: dict[str, object] = {
        "message_type": framing.INPUT_STREAM_DATA, "payload": b"payload", "payload_type": PayloadType.OUTPUT,
        "sequence_number": 258, "flags": 1, "schema_version": 1, "created_date": CREATED, "message_id": MESSAGE_ID,
    }
    fields.update(overrides)
    return AgentMessage(**fields)  # type: ignore[arg-type]


def test_header_fields_at_plugin_offsets() -> None:
    raw = framing.encode(sample())
    assert len(raw) == 120 + 7
    assert raw[0:4] == b"\x00\x00\x00\x74"  # header length 116, big-endian
    assert raw[4:36] == b"input_stream_data" + b" " * 15  # space padded, not NUL padded
    assert raw[36:40] == b"\x00\x00\x00\x01"
    assert raw[40:48] == struct.pack(">Q", CREATED)
    assert raw[48:56] == b"\x00\x00\x00\x00\x00\x00\x01\x02"
    assert raw[56:64] == b"\x00" * 7 + b"\x01"
    # UUID halves swapped: least significant 8 bytes first.
    assert raw[64:72] == bytes.fromhex("a508b5f073f31b16")
    assert raw[72:80] == bytes.fromhex("dd01e56bff48483e")
    assert raw[80:112] == hashlib.sha256(b"payload").digest()
    assert raw[112:116] == b"\x00\x00\x00\x01"
    assert raw[116:120] == b"\x00\x00\x00\x07"
    assert raw[120:] == b"payload"


def test_round_trip_every_field() -> None:
    msg = sample(sequence_number=-1, flags=2**63 + 5, payload=bytes(range(256)) * 9, payload_type=PayloadType.FLAG)
    back = framing.decode(framing.encode(msg))
    assert back == msg


def test_empty_payload_and_publication_messages() -> None:
    pause = AgentMessage(message_type=framing.PAUSE_PUBLICATION, created_date=CREATED, message_id=MESSAGE_ID)
    raw = bytearray(framing.encode(pause))
    raw[80:112] = b"\xff" * 32  # the service's digest on these is not checked (plugin behaviour)
    assert framing.decode(bytes(raw)).message_type == framing.PAUSE_PUBLICATION


def test_ack_shape_matches_plugin() -> None:
    ack = framing.ack_for(sample())
    assert ack.message_type == framing.ACKNOWLEDGE
    assert ack.flags == 3
    body = framing.parse_json(framing.decode(framing.encode(ack)))
    assert body == {"AcknowledgedMessageType": "input_stream_data",
                    "AcknowledgedMessageId": str(MESSAGE_ID),
                    "AcknowledgedMessageSequenceNumber": 258, "IsSequentialMessage": True}


def test_corrupted_digest_rejected() -> None:
    raw = bytearray(framing.encode(sample()))
    raw[-1] ^= 0x01
    with pytest.raises(FramingError, match="digest"):
        framing.decode(bytes(raw))


@pytest.mark.parametrize("cut", [0, 1, 60, 119])
def test_truncated_header_rejected(cut: int) -> None:
    with pytest.raises(FramingError, match="truncated"):
        framing.decode(framing.encode(sample())[:cut])


def test_truncated_payload_rejected() -> None:
    with pytest.raises(FramingError, match="payload length"):
        framing.decode(framing.encode(sample())[:-3])


def test_unknown_message_type_rejected() -> None:
    raw = bytearray(framing.encode(sample()))
    raw[4:36] = b"surprise_message".ljust(32, b" ")
    with pytest.raises(FramingError, match="unknown message type"):
        framing.decode(bytes(raw))


def test_bad_header_length_and_garbage_rejected() -> None:
    raw = bytearray(framing.encode(sample()))
    raw[0:4] = b"\x00\x00\x00\x75"
    with pytest.raises(FramingError, match="header length"):
        framing.decode(bytes(raw))
    raw[0:4] = b"\x00\x00\x00\x74"
    raw[4:36] = b"\xff" * 32
    with pytest.raises(FramingError):
        framing.decode(bytes(raw))


def test_flag_and_size_payloads() -> None:
    assert framing.flag_payload(framing.Flag.TERMINATE_SESSION) == b"\x00\x00\x00\x02"
    assert framing.parse_flag(b"\x00\x00\x00\x01") == framing.Flag.DISCONNECT_TO_PORT
    with pytest.raises(FramingError):
        framing.parse_flag(b"\x01")
    assert framing.size_payload(cols=120, rows=40) == b'{"cols": 120, "rows": 40}'


def test_version_compare_is_strict_like_the_plugin() -> None:
    assert framing.version_greater("3.0.197.0", "3.0.196.0")
    assert not framing.version_greater("3.0.196.0", "3.0.196.0")
    assert framing.version_greater("3.10.0.0", "3.9.999.0")
    assert not framing.version_greater("garbage", "3.0.196.0")


def test_smux_frames_little_endian_and_incremental_parse() -> None:
    raw = smux.frame(smux.CMD_PSH, 3, b"abc")
    assert raw == b"\x01\x02\x03\x00\x03\x00\x00\x00abc"
    big = smux.data_frames(5, b"x" * 70000)
    parser = smux.FrameParser()
    frames = []
    for i in range(0, len(big), 1000):  # arbitrary cut points
        frames += parser.feed(big[i:i + 1000])
    assert [len(d) for _, _, d in frames] == [32768, 32768, 70000 - 65536]
    assert {sid for _, sid, _ in frames} == {5}
    with pytest.raises(smux.SmuxError):
        smux.FrameParser().feed(b"\x02\x00\x00\x00\x01\x00\x00\x00")
