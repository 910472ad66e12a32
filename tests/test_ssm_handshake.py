"""The handshake's messages, built and parsed in one place for the client and the sandbox agent."""

from __future__ import annotations

import json
import random

import pytest

from ops.ssm import handshake
from ops.ssm.framing import FramingError
from ops.ssm.handshake import ActionStatus, Complete, Processed, Request, Response


def test_request_has_the_plugins_shape_and_round_trips() -> None:
    request = Request("3.3.0.0", (handshake.Action(handshake.SESSION_TYPE, {"SessionType": "Port", "Properties": {
        "type": "LocalPortForwarding"}}), handshake.Action(handshake.KMS_ENCRYPTION, {"KMSKeyId": "k"})))
    assert json.loads(request.payload()) == {"AgentVersion": "3.3.0.0", "RequestedClientActions": [
        {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Port",
                                                           "Properties": {"type": "LocalPortForwarding"}}},
        {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "k"}}]}
    assert Request.parse(request.payload()) == request


def test_response_has_the_plugins_shape_and_round_trips() -> None:
    response = Response("1.2.650.0", (Processed("SessionType", ActionStatus.SUCCESS),
                                      Processed("KMSEncryption", ActionStatus.FAILED, error="no key")), ("no key",))
    assert json.loads(response.payload()) == {"ClientVersion": "1.2.650.0", "ProcessedClientActions": [
        {"ActionType": "SessionType", "ActionStatus": 1, "ActionResult": None, "Error": ""},
        {"ActionType": "KMSEncryption", "ActionStatus": 2, "ActionResult": None, "Error": "no key"}],
        "Errors": ["no key"]}
    parsed = Response.parse(response.payload())
    assert parsed == response
    assert parsed.find("KMSEncryption") == Processed("KMSEncryption", 2, error="no key")
    assert json.loads(Response("v", ()).payload())["Errors"] is None  # as the plugin sends "no errors"


def test_complete_round_trips() -> None:
    done = Complete(elapsed_ns=1500, customer_message="This session is encrypted using AWS KMS.")
    assert json.loads(done.payload()) == {"HandshakeTimeToComplete": 1500,
                                          "CustomerMessage": "This session is encrypted using AWS KMS."}
    assert Complete.parse(done.payload()) == done


@pytest.mark.parametrize(("parse", "payload"), [
    (Request.parse, b""), (Request.parse, b"[]"), (Request.parse, b"{\"RequestedClientActions\": 3}"),
    (Response.parse, b"\xff\xfe"), (Response.parse, b"{\"ProcessedClientActions\": [1]}"),
    (Complete.parse, b"\"text\""),
])
def test_a_malformed_payload_is_a_framing_error(parse: object, payload: bytes) -> None:
    with pytest.raises(FramingError):
        parse(payload)  # type: ignore[operator]


def test_parsers_raise_only_their_own_error_on_arbitrary_json() -> None:
    rng = random.Random(16)
    atoms: list[object] = [None, 0, 1, True, "x", [], {}, [{}], [1], {"a": 1}]
    keys = ["AgentVersion", "RequestedClientActions", "ActionType", "ActionParameters", "ClientVersion",
            "ProcessedClientActions", "ActionStatus", "ActionResult", "Error", "Errors", "HandshakeTimeToComplete",
            "CustomerMessage"]

    def value(depth: int) -> object:
        if depth > 2 or rng.random() < 0.4:
            return rng.choice(atoms)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(3000):
        payload = json.dumps(value(0)).encode()
        for parse in (Request.parse, Response.parse, Complete.parse):
            try:
                parse(payload)
            except FramingError:
                pass
