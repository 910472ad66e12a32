"""The session handshake's messages, without I/O, for both ends: the agent's request, the client's
response, the agent's completion (JSON shapes of the plugin's `message/handshakemessage.go`).

The agent asks for client actions (the session type, KMS encryption), the client answers each with a
status, the agent completes. What each end does with them (a cipher, a KMS call) stays with that end;
what goes on the wire is built and parsed here only, so the client and the sandbox agent cannot drift.
Parsers raise FramingError, and nothing else, on a payload that is not the expected shape.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from ops.ssm.framing import FramingError

SESSION_TYPE = "SessionType"
KMS_ENCRYPTION = "KMSEncryption"


class ActionStatus(enum.IntEnum):
    SUCCESS = 1
    FAILED = 2
    UNSUPPORTED = 3


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise FramingError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise FramingError(f"{what} is not a JSON object")
    return value


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise FramingError(f"{what} is not a list of objects")
    return value


@dataclass(frozen=True)
class Action:
    """One action the agent asks of the client."""

    action_type: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    agent_version: str
    actions: tuple[Action, ...]

    def payload(self) -> bytes:
        return json.dumps({"AgentVersion": self.agent_version, "RequestedClientActions": [
            {"ActionType": a.action_type, "ActionParameters": a.parameters} for a in self.actions]}).encode()

    @classmethod
    def parse(cls, payload: bytes) -> Request:
        data = _object(payload, "handshake request")
        actions = []
        for item in _objects(data.get("RequestedClientActions"), "RequestedClientActions"):
            params = item.get("ActionParameters")
            actions.append(Action(str(item.get("ActionType", "")), params if isinstance(params, dict) else {}))
        return cls(agent_version=str(data.get("AgentVersion", "")), actions=tuple(actions))


@dataclass(frozen=True)
class Processed:
    """The client's answer to one action."""

    action_type: str
    status: int
    result: Any = None
    error: str = ""


@dataclass(frozen=True)
class Response:
    client_version: str
    processed: tuple[Processed, ...]
    errors: tuple[str, ...] = ()

    def payload(self) -> bytes:
        return json.dumps({"ClientVersion": self.client_version, "ProcessedClientActions": [
            {"ActionType": p.action_type, "ActionStatus": p.status, "ActionResult": p.result, "Error": p.error}
            for p in self.processed], "Errors": list(self.errors) or None}).encode()

    @classmethod
    def parse(cls, payload: bytes) -> Response:
        data = _object(payload, "handshake response")
        processed = tuple(
            Processed(action_type=str(item.get("ActionType", "")), status=_int(item.get("ActionStatus")),
                      result=item.get("ActionResult"), error=str(item.get("Error") or ""))
            for item in _objects(data.get("ProcessedClientActions"), "ProcessedClientActions"))
        errors = data.get("Errors") or []
        return cls(client_version=str(data.get("ClientVersion", "")), processed=processed,
                   errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (str(errors),))

    def find(self, action_type: str) -> Processed | None:
        return next((p for p in self.processed if p.action_type == action_type), None)


@dataclass(frozen=True)
class Complete:
    elapsed_ns: int = 0
    customer_message: str = ""

    def payload(self) -> bytes:
        return json.dumps({"HandshakeTimeToComplete": self.elapsed_ns,
                           "CustomerMessage": self.customer_message}).encode()

    @classmethod
    def parse(cls, payload: bytes) -> Complete:
        data = _object(payload, "handshake complete")
        return cls(elapsed_ns=_int(data.get("HandshakeTimeToComplete")),
                   customer_message=str(data.get("CustomerMessage") or ""))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
