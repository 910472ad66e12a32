"""The PostgreSQL start-up codec: byte-exact encodings, incremental framing, and garbage raising only
ProtocolError. Fast: no processes."""

from __future__ import annotations

import random
import struct

import pytest

from ops import pgwire
from ops.pgwire import ProtocolError


def test_ssl_gssenc_and_cancel_requests_have_their_fixed_codes() -> None:
    assert pgwire.ssl_request() == bytes.fromhex("0000000804d2162f")
    assert pgwire.gssenc_request() == bytes.fromhex("0000000804d21630")
    assert pgwire.decode_first(pgwire.ssl_request()) == pgwire.SSLRequest()
    assert pgwire.decode_first(pgwire.gssenc_request()) == pgwire.GSSENCRequest()
    cancel = pgwire.cancel_request(4242, b"\x01\x02\x03\x04")
    assert cancel == struct.pack("!iiii", 16, 80877102, 4242, 0x01020304)
    assert pgwire.decode_first(cancel) == pgwire.CancelRequest(pid=4242, secret=b"\x01\x02\x03\x04")
    # Protocol 3.2 (PostgreSQL 18): longer cancel keys.
    long_key = bytes(range(32))
    assert pgwire.decode_first(pgwire.cancel_request(7, long_key)) == pgwire.CancelRequest(pid=7, secret=long_key)


def test_startup_message_round_trip_as_libpq_writes_it() -> None:
    raw = (struct.pack("!ii", 0, 196608) + b"user\0alice\0database\0app\0application_name\0psql\0\0")
    raw = struct.pack("!i", len(raw)) + raw[4:]
    decoded = pgwire.decode_first(raw)
    assert decoded == pgwire.StartupMessage(protocol=196608,
                                            params={"user": "alice", "database": "app", "application_name": "psql"})
    assert isinstance(decoded, pgwire.StartupMessage)
    assert pgwire.startup_message(decoded.params) == raw
    assert decoded.database == "app"
    assert pgwire.StartupMessage(protocol=196608, params={"user": "bob"}).database == "bob"


@pytest.mark.parametrize("raw, why", [
    (b"\0\0\0\x08\0\x02\0\0", "protocol version 2"),
    (pgwire.startup_message({"database": "app"}), "without a user"),
    (struct.pack("!ii", 13, 196608) + b"user\0", "pairs"),
    (struct.pack("!ii", 9, 196608) + b"x", "NUL"),
    (b"\0\0\0\x07\0\0\0", "too short"),
    (struct.pack("!iii", 11, 80877102, 1)[:11], "length"),
])
def test_bad_first_packets_are_protocol_errors(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError):
        pgwire.decode_first(raw)


def test_reader_frames_split_input_and_switches_from_untyped_to_typed() -> None:
    stream = pgwire.ssl_request() + pgwire.startup_message({"user": "alice"})
    reader = pgwire.Reader(first=True)
    got: list[pgwire.FirstPacket] = []
    for byte in stream:
        reader.feed(bytes([byte]))
        while (packet := reader.next_first()) is not None:
            got.append(packet)
            if isinstance(packet, pgwire.StartupMessage):
                break
    assert got == [pgwire.SSLRequest(), pgwire.StartupMessage(protocol=196608, params={"user": "alice"})]
    reader.feed(pgwire.password_message("tok") + b"Qre")
    msg = reader.next_message()
    assert msg is not None and pgwire.decode_password(msg) == "tok"
    assert reader.next_message() is None
    assert reader.pending() == b"Qre"


def test_backend_messages_decode() -> None:
    reader = pgwire.Reader()
    reader.feed(pgwire.authentication(pgwire.AUTH_CLEARTEXT) + pgwire.authentication(pgwire.AUTH_OK)
                + pgwire.backend_key(99, b"\0\0\0\x05") + pgwire.parameter_status("server_version", "16")
                + pgwire.ready_for_query()
                + pgwire.error_response("role \"x\" does not exist", code="28000", hint="run db-access"))
    auth = reader.next_message()
    assert auth is not None and pgwire.decode_authentication(auth) == pgwire.Authentication(code=3)
    ok = reader.next_message()
    assert ok is not None and pgwire.decode_authentication(ok).code == pgwire.AUTH_OK
    key = reader.next_message()
    assert key is not None and pgwire.decode_backend_key(key) == (99, b"\0\0\0\x05")
    status = reader.next_message()
    assert status is not None and status.kind == b"S"
    ready = reader.next_message()
    assert ready == pgwire.Message(kind=b"Z", body=b"I")
    err = reader.next_message()
    assert err is not None
    fields = pgwire.decode_error(err)
    assert (fields.code, fields.message, fields.hint, fields.severity) == (
        "28000", 'role "x" does not exist', "run db-access", "FATAL")


def test_lengths_out_of_range_are_refused_before_buffering() -> None:
    reader = pgwire.Reader()
    reader.feed(b"R" + struct.pack("!i", pgwire.MAX_MESSAGE_LENGTH + 1))
    with pytest.raises(ProtocolError):
        reader.next_message()
    first = pgwire.Reader(first=True)
    first.feed(struct.pack("!i", 100_000))
    with pytest.raises(ProtocolError):
        first.next_first()


def test_encoders_refuse_nul_in_strings() -> None:
    with pytest.raises(ProtocolError):
        pgwire.password_message("a\0b")


def test_fuzz_decoders_raise_only_protocol_error() -> None:
    rng = random.Random(1234)
    seeds = [pgwire.ssl_request(), pgwire.cancel_request(1, b"abcd"), pgwire.startup_message({"user": "u"}),
             pgwire.error_response("m"), pgwire.authentication(3), pgwire.password_message("p"),
             pgwire.backend_key(1, b"1234")]
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 4)):
            op = rng.randint(0, 3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1:
                data.insert(rng.randint(0, len(data)), rng.randrange(256))
            elif op == 2 and data:
                del data[rng.randrange(len(data))]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        raw = bytes(data)
        for decode in (pgwire.decode_first, _typed_first, _typed_rest):
            try:
                decode(raw)
            except ProtocolError:
                pass


def _typed_first(raw: bytes) -> None:
    _typed_all(raw, first=True)


def _typed_rest(raw: bytes) -> None:
    _typed_all(raw, first=False)


def _typed_all(raw: bytes, *, first: bool) -> None:
    reader = pgwire.Reader(first=first)
    reader.feed(raw)
    if first:
        while reader.next_first() is not None:
            if not reader._first:  # a StartupMessage or CancelRequest ends the untyped phase
                return
        return
    while (msg := reader.next_message()) is not None:
        for decode in (pgwire.decode_authentication, pgwire.decode_error, pgwire.decode_password,
                       pgwire.decode_backend_key):
            try:
                decode(msg)
            except ProtocolError:
                pass
