"""IAM for the calls our Session Manager endpoint serves itself, and custom Session documents.

moto never sees StartSession, TerminateSession, ResumeSession, DescribeSessions, DescribeInstanceInformation,
ecs:ExecuteCommand or (emulated) cloudtrail:LookupEvents: the endpoint answers them. Before it does, it asks
moto (`POST /_bastionless/authorize`, ops.sandbox.moto_iam) to evaluate the caller's identity policies for
the action with the resources and condition keys AWS would use: the instance and the document for
StartSession, the session ARN and its `aws:ssmmessages:session-id` tag (the starter's user id) for
TerminateSession/ResumeSession, the cluster and task for ExecuteCommand. The endpoint does not verify
SigV4 signatures (moto does, for everything proxied to it); it trusts the access key it is given.

Custom documents: a StartSession naming a document other than AWS's port-forwarding ones is served from
that document as stored in the emulator (sessionType Port only): parameters it does not declare are
refused as AWS refuses them, and host/port come from its `properties`, so a document fixed to the
database cannot be pointed anywhere else.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Mapping
from typing import Any

from ops.sandbox.moto_iam import AUTHORIZE_PATH, PROBE_PATH

# X-Amz-Target -> IAM action.
ACTIONS = {
    "AmazonSSM.StartSession": "ssm:StartSession",
    "AmazonSSM.TerminateSession": "ssm:TerminateSession",
    "AmazonSSM.ResumeSession": "ssm:ResumeSession",
    "AmazonSSM.DescribeSessions": "ssm:DescribeSessions",
    "AmazonSSM.DescribeInstanceInformation": "ssm:DescribeInstanceInformation",
    "AmazonEC2ContainerServiceV20141113.ExecuteCommand": "ecs:ExecuteCommand",
    "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents": "cloudtrail:LookupEvents",
}
SESSION_TAG = "ssm:resourceTag/aws:ssmmessages:session-id"
_TEMPLATE_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class Refused(Exception):
    def __init__(self, code: str, message: str, status: int = 400, principal: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.principal = principal


def port_document_parameters(name: str, content: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, list[str]]:
    """The effective host/portNumber/localPortNumber of a StartSession with a custom Port document (sans-I/O).

    As Session Manager does: only declared parameters may be passed, each must match its allowedPattern,
    missing ones take their default, and `properties` (with `{{ name }}` substituted) decide the rest.
    """
    if content.get("sessionType") != "Port":
        raise Refused("InvalidDocument", f"document {name} is of sessionType {content.get('sessionType')!r}; "
                                         "the sandbox relay serves Port sessions only")
    declared: Mapping[str, Any] = content.get("parameters") or {}
    undeclared = sorted(set(given) - set(declared))
    if undeclared:
        raise Refused("InvalidParameters", f"document {name} does not support the parameter(s) "
                                           f"{', '.join(undeclared)}")
    values: dict[str, str] = {}
    for key, spec in declared.items():
        raw = given.get(key)
        value = str(raw[0] if isinstance(raw, list) and raw else raw) if raw not in (None, []) else None
        if value is None:
            if "default" not in spec:
                raise Refused("InvalidParameters", f"document {name} requires the parameter {key}")
            value = str(spec["default"])
        pattern = spec.get("allowedPattern")
        if pattern and re.fullmatch(str(pattern).removeprefix("^").removesuffix("$"), value) is None:
            raise Refused("InvalidParameters", f"parameter {key} = {value!r} does not match the document's "
                                               f"allowedPattern {pattern}")
        values[key] = value
    props: Mapping[str, Any] = content.get("properties") or {}
    out = {k: [_TEMPLATE_RE.sub(lambda m: values.get(m.group(1), ""), str(v))] for k, v in props.items()
           if k in ("host", "portNumber", "localPortNumber")}
    if not out.get("portNumber"):
        raise Refused("InvalidDocument", f"document {name} has no properties.portNumber")
    return out


class EndpointIam:
    """The endpoint's side: ask moto for a decision, remember who started which session."""

    def __init__(self, moto_url: str) -> None:
        self.moto_url = moto_url.rstrip("/")
        self.session_userids: dict[str, str] = {}
        self._enforced: bool | None = None  # asked once: is moto ops.sandbox.moto_iam (IAM on)?

    async def authorize(self, target: str, params: Mapping[str, Any], *, access_key: str, session_token: str,
                        region: str) -> dict[str, Any]:
        """moto's verdict for this call; raises Refused when IAM denies it. {"enforced": False} without IAM."""
        action = ACTIONS.get(target)
        if action is None:
            return {"enforced": False, "allowed": True}
        context: dict[str, list[str]] = {}
        if action in ("ssm:TerminateSession", "ssm:ResumeSession"):
            owner = self.session_userids.get(str(params.get("SessionId", "")))
            if owner:
                context[SESSION_TAG] = [owner]
        if self._enforced is None:
            self._enforced = await asyncio.to_thread(self._probe)
        if not self._enforced:
            return {"enforced": False, "allowed": True}
        body = {"access_key": access_key, "session_token": session_token, "action": action, "region": region,
                "params": dict(params), "context": context}
        reply = await asyncio.to_thread(self._post, body)
        if reply.get("enforced") and not reply.get("allowed"):
            raise Refused(str(reply.get("code") or "AccessDeniedException"), str(reply.get("message") or "denied"),
                          principal=str(reply.get("principal") or ""))
        return reply

    def _probe(self) -> bool:
        """A plain moto_server (some tests start one) has no IAM to enforce; ours says so at PROBE_PATH."""
        if not self.moto_url.startswith("http://"):
            return False
        try:
            with urllib.request.urlopen(self.moto_url + PROBE_PATH, timeout=10) as resp:  # noqa: S310 - http://
                return bool(json.loads(resp.read()).get("enforced"))
        except (OSError, ValueError):
            return False

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.moto_url.startswith("http://"):
            raise Refused("InternalServerError", f"moto URL {self.moto_url} is not http://", 500)
        request = urllib.request.Request(self.moto_url + AUTHORIZE_PATH, data=json.dumps(body).encode(),  # noqa: S310
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - http:// checked above
                reply: dict[str, Any] = json.loads(resp.read())
        except OSError as exc:
            raise Refused("InternalServerError", f"the sandbox could not evaluate IAM: {exc}", 500) from None
        return reply

    def started(self, session_id: str, reply: Mapping[str, Any]) -> None:
        """Session Manager tags a session with its starter's user id; TerminateSession conditions read it."""
        if reply.get("userid"):
            self.session_userids[session_id] = str(reply["userid"])
