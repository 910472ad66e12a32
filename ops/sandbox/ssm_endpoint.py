"""Local Session Manager endpoint for the sandbox (loopback only).

A stand-in for the parts of AWS that moto lacks, on one HTTP port:
- JSON 1.1 API calls as boto3 makes them: `AmazonSSM.StartSession`, `TerminateSession`, `ResumeSession`,
  `DescribeSessions`, `DescribeInstanceInformation`, and ECS `ExecuteCommand`; every other request is
  proxied unchanged to moto, so boto3's `ssm` and `ecs` clients point here;
- the data-channel websocket `/v1/data-channel/<session-id>` with an agent (ops.sandbox.agent);
- test hooks under `/_sandbox/` (drop a websocket, inject loss/reorder, pause/start publication, agent
  boot time after a relay start);
- `CloudTrail_20131101.LookupEvents` for the calls above (every other CloudTrail call goes to moto).

Emulated, and said so: the session owner is what moto's STS says about the caller's access key
(signatures are not verified); the relay's "SSM ping" is Online iff its moto instance is running
(a stopped instance is ConnectionLost, a terminated one is not listed). The CloudTrail events are
EMULATED: moto's LookupEvents does not record Session Manager or ECS Exec calls, so this endpoint
records a CloudTrail-shaped event (caller ARN from moto's STS, sourceIPAddress = the loopback address
the call came from, user agent, time, request parameters including the reason, errorCode for a
refused call) for each StartSession, ResumeSession, TerminateSession and ExecuteCommand it serves,
keeps them in sessions.json and answers LookupEvents from them. `invoke audit` says so in the sandbox.

    python -m ops.sandbox.ssm_endpoint --host 127.0.0.1 --port 0 --moto-url URL --state-dir DIR
prints `READY <url>` once serving and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from aiohttp import ClientSession, ClientTimeout, WSMsgType, web
from botocore.config import Config

from ops.facts import (
    ECS_EXEC_DOCUMENT,
    ECS_TASKS_FILE,
    PREFERENCES_DOCUMENT,
    RELAY_ROLE,
    ROLE_TAG,
    SANDBOX_AGENT_VERSION,
    SANDBOX_AGENT_VERSION_ENV,
    SESSIONS_FILE,
)
from ops.sandbox import agent as agent_mod
from ops.sandbox import endpoint_iam
from ops.sandbox import tls as sandbox_tls
from ops.sandbox.agent import AgentConnection, AgentProfile, LossConfig, SessionSpec
from ops.ssm import framing

JSON_CT = "application/x-amz-json-1.1"
LOOKUP_EVENTS = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents"
# The calls whose CloudTrail events this endpoint emulates, and their event sources.
AUDITED = {"AmazonSSM.StartSession": "ssm.amazonaws.com", "AmazonSSM.TerminateSession": "ssm.amazonaws.com",
           "AmazonSSM.ResumeSession": "ssm.amazonaws.com",
           "AmazonEC2ContainerServiceV20141113.ExecuteCommand": "ecs.amazonaws.com"}
MAX_EVENTS = 20000
HIDDEN = "Value hidden due to security reasons."
_CRED_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/")
# moto does not verify signatures; the caller's access key is kept so STS says who the caller is.
UNCHECKED_SECRET = "sandbox-signature-not-verified"  # noqa: S105
# What the Session Manager service does on its own (times in seconds of AWS time, scaled by `time_scale`):
# it closes every data-channel websocket after about an hour (clients resume), and ends a session idle
# for the preferences' idleSessionTimeout (default 20 min; ECS Exec: fixed 20 min) or older than
# maxSessionDuration, telling the client with channel_closed.
WEBSOCKET_LIFETIME = 3600.0
DEFAULT_IDLE_MINUTES = 20
IDLE_ENDED = "Your session timed out due to inactivity and has been terminated."
MAX_DURATION_ENDED = "Your session has reached its maximum duration and has been terminated."
_INPUT = framing.INPUT_STREAM_DATA.encode()
_OUTPUT = framing.OUTPUT_STREAM_DATA.encode()
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class Session:
    session_id: str
    target: str
    owner: str
    reason: str
    document: str
    parameters: dict[str, list[str]]
    kind: str
    status: str = "Connected"
    start: float = field(default_factory=time.time)
    end: float | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    command: list[str] = field(default_factory=list)
    details: str = ""
    region: str = "us-east-1"
    kms_key_id: str = ""
    idle_timeout: float = DEFAULT_IDLE_MINUTES * 60.0  # AWS seconds
    max_duration: float = 0.0  # AWS seconds; 0: no maximum
    # runtime only
    ws: web.WebSocketResponse | None = None
    agent: AgentConnection | None = None
    ws_opened: float = 0.0
    websockets: int = 0  # data-channel websockets accepted so far (1 + resumes)
    last_activity: float = field(default_factory=time.monotonic)
    started_mono: float = field(default_factory=time.monotonic)

    def record(self) -> dict[str, Any]:
        return {"id": self.session_id, "target": self.target, "owner": self.owner, "reason": self.reason,
                "document": self.document, "parameters": self.parameters, "kind": self.kind,
                "status": self.status, "start": self.start, "end": self.end, "details": self.details,
                "region": self.region, "kms_key_id": self.kms_key_id}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Session:
        status = rec.get("status", "Terminated")
        sess = cls(session_id=rec["id"], target=rec.get("target", ""), owner=rec.get("owner", ""),
                   reason=rec.get("reason", ""), document=rec.get("document", ""),
                   parameters=rec.get("parameters") or {}, kind=rec.get("kind", "port"), status=status,
                   start=rec.get("start", 0.0), end=rec.get("end"), details=rec.get("details", ""),
                   region=rec.get("region", "us-east-1"), kms_key_id=rec.get("kms_key_id", ""))
        if status not in ("Terminated", "Failed"):
            # Its agent died with the previous endpoint process.
            sess.status, sess.end = "Terminated", sess.end or time.time()
        return sess

    def api_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {"SessionId": self.session_id, "Target": self.target, "Status": self.status,
                                "StartDate": self.start, "DocumentName": self.document, "Owner": self.owner,
                                "Reason": self.reason, "Details": self.details, "OutputUrl": {}}
        if self.end is not None:
            view["EndDate"] = self.end
        return view


class Endpoint:
    def __init__(self, *, moto_url: str, state_dir: Path, agent_version: str, profile: AgentProfile,
                 time_scale: float = 1.0) -> None:
        self.moto_url = moto_url.rstrip("/")
        self.state_dir = state_dir
        self.agent_version = agent_version
        self.profile = profile
        # Sandbox seconds per AWS second for the service's own timers (hourly close, idle, maximum).
        self.time_scale = time_scale
        self._timers: asyncio.Task[None] | None = None
        self.loss = LossConfig()
        self.sessions: dict[str, Session] = {}
        self.base_url = ""
        self.stream_base = ""  # wss://host:port of the TLS listener: AWS hands out wss:// stream URLs
        self._http: ClientSession | None = None
        self._owners: dict[str, str] = {}
        self._clients: dict[tuple[str, str, str], Any] = {}
        self.iam = endpoint_iam.EndpointIam(moto_url)  # the caller's policies, evaluated by moto
        self.events: list[dict[str, Any]] = []  # emulated CloudTrail records, oldest first
        # An agent needs a while after its instance starts before it is Online again: the sandbox waits
        # `agent_boot_seconds` after it saw a relay come back to running (0 unless a test sets it).
        self.agent_boot_seconds = 0.0
        self._running_since: dict[str, float] = {}
        self._load()

    # ---- persistence ----
    def _load(self) -> None:
        path = self.state_dir / SESSIONS_FILE
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            for rec in data.get("sessions", []):
                sess = Session.from_record(rec)
                self.sessions[sess.session_id] = sess
            self.events = [e for e in data.get("events", []) if isinstance(e, dict)]
        self._save()

    def _save(self) -> None:
        path = self.state_dir / SESSIONS_FILE
        tmp = path.with_suffix(".tmp")
        data: dict[str, Any] = {"sessions": [s.record() for s in self.sessions.values()]}
        if self.events:
            data["events"] = self.events[-MAX_EVENTS:]
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    # ---- moto access ----
    def _boto(self, service: str, region: str, access_key: str = "testing") -> Any:
        # Kept: a client costs tens of ms to build, and every StartSession of a pool asks for several.
        key = (service, region, access_key)
        found = self._clients.get(key)
        if found is None:
            found = self._clients[key] = boto3.client(
                service, region_name=region, endpoint_url=self.moto_url,  # type: ignore[call-overload]
                aws_access_key_id=access_key, aws_secret_access_key=UNCHECKED_SECRET,
                config=Config(retries={"max_attempts": 2}))
        return found

    async def _owner(self, access_key: str, region: str) -> str:
        if access_key not in self._owners:
            def who() -> str:
                arn: str = self._boto("sts", region, access_key).get_caller_identity()["Arn"]
                return arn
            try:
                self._owners[access_key] = await asyncio.to_thread(who)
            except botocore.exceptions.BotoCoreError:
                return f"arn:aws:iam::000000000000:user/{access_key}"
            except botocore.exceptions.ClientError:
                return f"arn:aws:iam::000000000000:user/{access_key}"
        return self._owners[access_key]

    async def _preferences(self, region: str) -> dict[str, Any]:
        """Session Manager preferences live in the SSM-SessionManagerRunShell document's inputs."""
        def fetch() -> dict[str, Any]:
            try:
                doc = self._boto("ssm", region).get_document(Name=PREFERENCES_DOCUMENT)
                inputs = json.loads(doc.get("Content") or "{}").get("inputs") or {}
            except (botocore.exceptions.ClientError, ValueError, AttributeError):
                return {}
            return inputs if isinstance(inputs, dict) else {}
        return await asyncio.to_thread(fetch)

    async def _exec_kms_key(self, region: str, cluster: str) -> str:
        """ECS Exec encrypts with the cluster's executeCommandConfiguration.kmsKeyId, not the preferences."""
        def fetch() -> str:
            try:
                found = self._boto("ecs", region).describe_clusters(clusters=[cluster], include=["CONFIGURATIONS"])
            except botocore.exceptions.ClientError:
                return ""
            for item in found.get("clusters") or []:
                config = (item.get("configuration") or {}).get("executeCommandConfiguration") or {}
                return str(config.get("kmsKeyId") or "")
            return ""
        return await asyncio.to_thread(fetch)

    @staticmethod
    def _minutes(inputs: dict[str, Any], key: str, default: int) -> float:
        try:
            return float(int(str(inputs.get(key) or default))) * 60
        except ValueError:
            return float(default) * 60

    def _kms_decrypt(self, region: str) -> Any:
        def decrypt(blob: bytes, context: dict[str, str]) -> bytes:
            kms = self._boto("kms", region)
            plain: bytes = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"]
            return plain
        return decrypt

    def _relays_sync(self, region: str, instance_ids: list[str] | None = None) -> list[dict[str, Any]]:
        ec2 = self._boto("ec2", region)
        filters = [{"Name": f"tag:{ROLE_TAG}", "Values": [RELAY_ROLE]}]
        kwargs: dict[str, Any] = {"Filters": filters}
        if instance_ids:
            kwargs["InstanceIds"] = instance_ids
        try:
            pages = ec2.describe_instances(**kwargs)
        except botocore.exceptions.ClientError:
            return []
        return [i for r in pages.get("Reservations", []) for i in r.get("Instances", [])]

    async def _relays(self, region: str, instance_ids: list[str] | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._relays_sync, region, instance_ids)

    # ---- HTTP ----
    async def handle_root(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "")
        handler = {
            "AmazonSSM.StartSession": self.start_session,
            "AmazonSSM.TerminateSession": self.terminate_session,
            "AmazonSSM.ResumeSession": self.resume_session,
            "AmazonSSM.DescribeSessions": self.describe_sessions,
            "AmazonSSM.DescribeInstanceInformation": self.describe_instance_information,
            "AmazonEC2ContainerServiceV20141113.ExecuteCommand": self.execute_command,
            LOOKUP_EVENTS: self.lookup_events,
        }.get(target)
        if handler is None:
            if target.endswith((".ListTasks", ".DescribeTasks")) and target.startswith("AmazonEC2Container"):
                return await self.proxy_ecs_tasks(request, target)
            return await self.proxy(request)
        body = await request.read()
        try:
            params = json.loads(body or b"{}")
            auth = request.headers.get("Authorization", "")
            match = _CRED_RE.search(auth)
            access_key, region = (match.group(1), match.group(2)) if match else ("testing", "us-east-1")
            try:
                try:
                    verdict = await self.iam.authorize(target, params, access_key=access_key, region=region,
                                                       session_token=request.headers.get("X-Amz-Security-Token", ""))
                except endpoint_iam.Refused as refused:
                    if refused.principal:
                        self._owners[access_key] = refused.principal
                    raise ApiError(refused.code, refused.message, refused.status) from None
                if verdict.get("principal"):
                    self._owners[access_key] = str(verdict["principal"])
                result = await handler(params, access_key=access_key, region=region)
                sid = result.get("SessionId") or (result.get("session") or {}).get("sessionId")
                if sid and target in ("AmazonSSM.StartSession", "AmazonEC2ContainerServiceV20141113.ExecuteCommand"):
                    self.iam.started(str(sid), verdict)
            except ApiError as exc:
                if target in AUDITED:
                    await self._audit(request, target, params, {}, access_key=access_key, region=region, error=exc)
                raise
            if target in AUDITED:
                await self._audit(request, target, params, result, access_key=access_key, region=region)
        except ApiError as exc:
            return web.json_response({"__type": exc.code, "message": exc.message}, status=exc.status,
                                     content_type=JSON_CT)
        except ValueError:
            return web.json_response({"__type": "SerializationException", "message": "invalid JSON"}, status=400,
                                     content_type=JSON_CT)
        return web.Response(body=json.dumps(result).encode(), content_type=JSON_CT)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=300), auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        # The signature covers Host: keep the caller's, so moto (IAM enforced) can verify it.
        if "Host" in request.headers:
            headers["Host"] = request.headers["Host"]
        body = await request.read()
        async with self._http.request(request.method, self.moto_url + request.path_qs, headers=headers,
                                      data=body, allow_redirects=False) as resp:
            payload = await resp.read()
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
            if "Content-Encoding" in resp.headers:
                out_headers["Content-Encoding"] = resp.headers["Content-Encoding"]
            return web.Response(status=resp.status, headers=out_headers, body=payload)

    async def proxy_ecs_tasks(self, request: web.Request, target: str) -> web.StreamResponse:
        """moto's ListTasks/DescribeTasks plus the tasks of ecs_tasks.json that moto cannot hold."""
        resp = await self.proxy(request)
        if resp.status != 200 or not isinstance(resp, web.Response) or resp.body is None:
            return resp
        try:
            params = json.loads(await request.read() or b"{}")
            body = json.loads(bytes(resp.body))  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return resp
        cluster = str(params.get("cluster") or "default")
        if target.endswith(".ListTasks"):
            arns = body.setdefault("taskArns", [])
            service = params.get("serviceName")
            for entry in self._sandbox_tasks():
                arn = str(entry.get("taskArn", ""))
                if arn in arns or self._file_task(cluster, arn) is None:
                    continue
                if service and entry.get("group") != f"service:{service}":
                    continue
                if params.get("desiredStatus", "RUNNING") != entry.get("desiredStatus", "RUNNING"):
                    continue
                arns.append(arn)
        else:
            have = {t.get("taskArn") for t in body.get("tasks", [])}
            for wanted in params.get("tasks") or []:
                found = self._file_task(cluster, str(wanted))
                if found is None or found.get("taskArn") in have:
                    continue
                body.setdefault("tasks", []).append(found)
                body["failures"] = [f for f in body.get("failures", [])
                                    if f.get("arn") not in (wanted, found.get("taskArn"))]
        return web.Response(body=json.dumps(body).encode(), content_type=JSON_CT)

    # ---- emulated CloudTrail ----
    async def _audit(self, request: web.Request, target: str, params: dict[str, Any], result: dict[str, Any], *,
                     access_key: str, region: str, error: ApiError | None = None) -> None:
        """Record one CloudTrail-shaped management event for an audited call (EMULATED, see the module doc)."""
        owner = await self._owner(access_key, region)
        name = target.rsplit(".", 1)[-1]
        account = owner.split(":")[4] if owner.count(":") >= 5 else "000000000000"
        kind = ("AssumedRole" if ":assumed-role/" in owner else "Root" if owner.endswith(":root") else "IAMUser")
        user = owner.rsplit("/", 1)[-1] if "/" in owner else "root"
        if name == "ExecuteCommand":
            keys: tuple[str, ...] = ("cluster", "container", "command", "interactive", "task")
            req: dict[str, Any] = {k: params.get(k) for k in keys if k in params}
            resp = {k: v for k, v in result.items() if k != "session"}
            if "session" in result:
                resp["session"] = {"sessionId": result["session"]["sessionId"],
                                   "streamUrl": result["session"]["streamUrl"],
                                   "tokenValue": "HIDDEN_DUE_TO_SECURITY_REASONS"}
        else:
            names: dict[str, str] = {"Target": "target", "DocumentName": "documentName",
                                     "Parameters": "parameters", "Reason": "reason", "SessionId": "sessionId"}
            req = {names[k]: v for k, v in params.items() if k in names}
            resp = {"sessionId": result["SessionId"]} if "SessionId" in result else {}
            if "TokenValue" in result:
                resp.update({"tokenValue": HIDDEN, "streamUrl": result.get("StreamUrl", "")})
        now = time.time()
        record: dict[str, Any] = {
            "eventVersion": "1.09",
            "userIdentity": {"type": kind, "principalId": access_key, "arn": owner, "accountId": account,
                             "accessKeyId": access_key, "userName": user},
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "eventSource": AUDITED[target], "eventName": name, "awsRegion": region,
            "sourceIPAddress": request.remote or "127.0.0.1",
            "userAgent": request.headers.get("User-Agent", ""),
            "requestParameters": req, "responseElements": resp or None,
            "requestID": secrets.token_hex(16), "eventID": secrets.token_hex(16), "readOnly": False,
            "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": account,
            "eventCategory": "Management", "emulated": "bastionless sandbox endpoint",
        }
        if error is not None:
            record.update({"errorCode": error.code, "errorMessage": error.message})
        resource = str(req.get("target") or req.get("task") or req.get("sessionId") or "")
        self.events.append({"time": now, "name": name, "source": AUDITED[target], "username": user,
                            "access_key": access_key, "resource": resource, "record": record})
        self._save()

    async def lookup_events(self, params: dict[str, Any], *, access_key: str, region: str) -> dict[str, Any]:
        """CloudTrail LookupEvents over the emulated events: one lookup attribute, time range, paging."""
        attrs = params.get("LookupAttributes") or []
        if len(attrs) > 1:
            raise ApiError("InvalidLookupAttributesException", "only one lookup attribute is allowed")
        start = _ts(params["StartTime"]) if params.get("StartTime") is not None else 0.0
        end = _ts(params["EndTime"]) if params.get("EndTime") is not None else time.time() + 1
        found = [e for e in self.events if start <= float(e["time"]) <= end
                 and e["record"].get("awsRegion", region) == region]
        if attrs:
            key, value = attrs[0].get("AttributeKey"), attrs[0].get("AttributeValue")
            field_of = {"EventName": "name", "EventSource": "source", "Username": "username",
                        "AccessKeyId": "access_key", "ResourceName": "resource"}
            if key == "EventId":
                found = [e for e in found if e["record"]["eventID"] == value]
            elif key == "ReadOnly":
                found = [e for e in found if str(value).lower() == "false"]
            elif key in field_of:
                found = [e for e in found if e[field_of[key]] == value]
            else:
                raise ApiError("InvalidLookupAttributesException", f"unsupported lookup attribute {key}")
        found.sort(key=lambda e: float(e["time"]), reverse=True)
        limit = min(int(params.get("MaxResults") or 50), 50)
        offset = int(params.get("NextToken") or 0)
        page = found[offset:offset + limit]
        out: dict[str, Any] = {"Events": [{
            "EventId": e["record"]["eventID"], "EventName": e["name"], "ReadOnly": "false",
            "AccessKeyId": e["access_key"], "EventTime": float(e["time"]), "EventSource": e["source"],
            "Username": e["username"],
            "Resources": [{"ResourceType": "AWS::EC2::Instance" if e["resource"].startswith("i-") else
                           "AWS::SSM::ManagedInstance", "ResourceName": e["resource"]}] if e["resource"] else [],
            "CloudTrailEvent": json.dumps(e["record"])} for e in page]}
        if offset + limit < len(found):
            out["NextToken"] = str(offset + limit)
        return out

    def _stream_url(self, session_id: str) -> str:
        return f"{self.stream_base}/v1/data-channel/{session_id}?role=publish_subscribe"

    def _new_session_id(self, owner: str) -> str:
        name = owner.rsplit("/", 1)[-1].rsplit(":", 1)[-1] or "sandbox"
        name = re.sub(r"[^A-Za-z0-9_.@-]", "-", name)[:40]
        return f"{name}-{secrets.token_hex(9)[:17]}"

    # ---- SSM API ----
    async def start_session(self, params: dict[str, Any], *, access_key: str, region: str) -> dict[str, Any]:
        target = params.get("Target")
        if not isinstance(target, str) or not target:
            raise ApiError("ValidationException", "Target is required")
        document = params.get("DocumentName") or PREFERENCES_DOCUMENT
        raw_params = params.get("Parameters") or {}
        if document not in agent_mod.PORT_DOCUMENTS:
            # A custom Session document from the emulator: its fixed host/port win (ops.sandbox.endpoint_iam).
            raw_params = await self._custom_port_parameters(document, raw_params, region)
        if not isinstance(raw_params, dict) or not raw_params.get("portNumber"):
            raise ApiError("InvalidParameters", "portNumber is required for a port-forwarding document")
        if document.endswith("ToRemoteHost") and not raw_params.get("host"):
            raise ApiError("InvalidParameters", "host is required for AWS-StartPortForwardingSessionToRemoteHost")
        instances = await self._relays(region, [target]) if target.startswith("i-") else []
        if not instances:
            raise ApiError("TargetNotConnected", f"{target} is not a relay instance known to the sandbox")
        if instances[0].get("State", {}).get("Name") != "running":
            raise ApiError("TargetNotConnected", f"{target} is not connected (instance is not running)")
        owner = await self._owner(access_key, region)
        prefs = await self._preferences(region)
        sess = Session(session_id=self._new_session_id(owner), target=target, owner=owner,
                       reason=str(params.get("Reason") or ""), document=document,
                       parameters={k: [str(x) for x in v] if isinstance(v, list) else [str(v)]
                                   for k, v in raw_params.items()},
                       kind="port", region=region, kms_key_id=str(prefs.get("kmsKeyId") or ""),
                       idle_timeout=self._minutes(prefs, "idleSessionTimeout", DEFAULT_IDLE_MINUTES),
                       max_duration=self._minutes(prefs, "maxSessionDuration", 0))
        self.sessions[sess.session_id] = sess
        self._save()
        return {"SessionId": sess.session_id, "TokenValue": sess.token, "StreamUrl": self._stream_url(sess.session_id)}

    async def _custom_port_parameters(self, document: str, given: Any, region: str) -> dict[str, list[str]]:
        def fetch() -> dict[str, Any]:
            try:
                content: dict[str, Any] = json.loads(self._boto("ssm", region).get_document(Name=document)["Content"])
            except (botocore.exceptions.ClientError, ValueError, KeyError):
                raise ApiError("InvalidDocument", f"document {document} does not exist") from None
            return content
        try:
            return endpoint_iam.port_document_parameters(document, await asyncio.to_thread(fetch),
                                                         given if isinstance(given, dict) else {})
        except endpoint_iam.Refused as refused:
            raise ApiError(refused.code, refused.message, refused.status) from None

    def _get_session(self, params: dict[str, Any]) -> Session:
        sid = params.get("SessionId")
        sess = self.sessions.get(sid) if isinstance(sid, str) else None
        if sess is None:
            raise ApiError("DoesNotExistException", f"session {sid} does not exist")
        return sess

    async def terminate_session(self, params: dict[str, Any], *, access_key: str, region: str) -> dict[str, Any]:
        sess = self._get_session(params)
        await self._terminate(sess, "Session terminated by TerminateSession")
        return {"SessionId": sess.session_id}

    async def _terminate(self, sess: Session, output: str = "") -> None:
        if sess.status in ("Terminated", "Failed"):
            return
        sess.status = "Terminating"
        agent, ws = sess.agent, sess.ws
        sess.agent = sess.ws = None
        if agent is not None:
            if agent.plugin is not None:
                await agent.plugin.stop()
            if not agent.finished:
                agent.finished = True
                if ws is not None and not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.send_bytes(framing.encode(framing.channel_closed(session_id=sess.session_id,
                                                                                  output=output)))
            await agent.stop()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        sess.status, sess.end = "Terminated", time.time()
        self._save()

    def _mark_terminated(self, sess: Session) -> None:
        if sess.status not in ("Terminated", "Failed"):
            sess.status, sess.end = "Terminated", time.time()
            self._save()

    async def resume_session(self, params: dict[str, Any], *, access_key: str, region: str) -> dict[str, Any]:
        sess = self._get_session(params)
        if sess.status in ("Terminated", "Failed", "Terminating"):
            raise ApiError("DoesNotExistException", f"session {sess.session_id} is {sess.status}")
        if sess.kind == "port":
            instances = await self._relays(region, [sess.target]) if sess.target.startswith("i-") else []
            if not instances or instances[0].get("State", {}).get("Name") != "running":
                # Its agent is gone with the instance: nothing to resume onto.
                raise ApiError("TargetNotConnected", f"{sess.target} is not connected (instance is not running)")
        sess.token = secrets.token_urlsafe(32)
        return {"SessionId": sess.session_id, "TokenValue": sess.token, "StreamUrl": self._stream_url(sess.session_id)}

    async def describe_sessions(self, params: dict[str, Any], *, access_key: str, region: str) -> dict[str, Any]:
        state = params.get("State")
        if state not in ("Active", "History"):
            raise ApiError("ValidationException", "State must be Active or History")
        active = {"Connected", "Connecting", "Disconnected", "Terminating"}
        found = [s for s in self.sessions.values() if (s.status in active) == (state == "Active")]
        for flt in params.get("Filters") or []:
            key, value = flt.get("key") or flt.get("Key"), flt.get("value") or flt.get("Value")
            attr = {"Target": "target", "Owner": "owner", "Status": "status", "SessionId": "session_id"}.get(key)
            if attr:
                found = [s for s in found if getattr(s, attr) == value]
            elif key == "InvokedAfter":
                found = [s for s in found if s.start >= _ts(value)]
            elif key == "InvokedBefore":
                found = [s for s in found if s.start <= _ts(value)]
        found.sort(key=lambda s: s.start, reverse=True)
        limit = int(params.get("MaxResults") or 200)
        start = int(params.get("NextToken") or 0)
        page = found[start:start + limit]
        result: dict[str, Any] = {"Sessions": [s.api_view() for s in page]}
        if start + limit < len(found):
            result["NextToken"] = str(start + limit)
        return result

    async def describe_instance_information(self, params: dict[str, Any], *, access_key: str,
                                            region: str) -> dict[str, Any]:
        ids: list[str] = []
        for flt in params.get("InstanceInformationFilterList") or []:
            if flt.get("key") == "InstanceIds":
                ids += flt.get("valueSet") or []
        for flt in params.get("Filters") or []:
            if flt.get("Key") == "InstanceIds":
                ids += flt.get("Values") or []
        infos = []
        for inst in await self._relays(region, ids or None):
            state = inst.get("State", {}).get("Name")
            if state == "terminated":
                continue  # Systems Manager drops terminated instances from its inventory
            running = state == "running"
            iid = str(inst["InstanceId"])
            if not running:
                self._running_since[iid] = 0.0  # seen down: the next start has to boot the agent
            elif self._running_since.get(iid) == 0.0:
                self._running_since[iid] = time.time()
            elif iid not in self._running_since:
                launched = inst.get("LaunchTime")  # a new instance boots its agent from its launch
                self._running_since[iid] = _ts(launched) if launched is not None else 0.0
            booted = time.time() - self._running_since.get(iid, 0.0) >= self.agent_boot_seconds
            running = running and booted
            infos.append({
                "InstanceId": inst["InstanceId"], "PingStatus": "Online" if running else "ConnectionLost",
                "LastPingDateTime": time.time(), "AgentVersion": self.agent_version, "IsLatestVersion": True,
                "PlatformType": "Linux", "PlatformName": "Amazon Linux", "PlatformVersion": "2023",
                "ResourceType": "EC2Instance", "IPAddress": inst.get("PrivateIpAddress", ""),
                "ComputerName": inst.get("PrivateDnsName", ""), "AssociationStatus": "Success",
            })
        return {"InstanceInformationList": infos}

    # ---- ECS ExecuteCommand ----
    def _sandbox_tasks(self) -> list[dict[str, Any]]:
        """ecs_tasks.json: task ARNs, or task objects shaped like DescribeTasks' `tasks[]` (for tasks moto
        cannot run itself: moto 5.2.5 fails RunTask for awsvpc tasks)."""
        try:
            data = json.loads((self.state_dir / ECS_TASKS_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return []
        if isinstance(data, dict):
            data = data.get("tasks", [])
        return [x if isinstance(x, dict) else {"taskArn": str(x)} for x in data if isinstance(x, dict | str)]

    def _file_task(self, cluster: str, task: str) -> dict[str, Any] | None:
        for entry in self._sandbox_tasks():
            arn = str(entry.get("taskArn", ""))
            if not arn or (task != arn and arn.rsplit("/", 1)[-1] != task):
                continue
            where = str(entry.get("clusterArn", entry.get("cluster", "")))
            if "containers" in entry and (not where or where == cluster or where.rsplit("/", 1)[-1] == cluster):
                return entry
        return None

    async def execute_command(self, params: dict[str, Any], *, access_key: str, region: str) -> dict[str, Any]:
        cluster, task = params.get("cluster") or "default", params.get("task")
        command = params.get("command")
        if not task or not command:
            raise ApiError("InvalidParameterException", "task and command are required")
        if not params.get("interactive", False):
            raise ApiError("InvalidParameterException", "Interactive is the only mode supported currently.")

        def describe() -> list[dict[str, Any]]:
            try:
                tasks: list[dict[str, Any]] = self._boto("ecs", region).describe_tasks(
                    cluster=cluster, tasks=[task])["tasks"]
            except botocore.exceptions.ClientError:
                return []
            return tasks

        tasks = await asyncio.to_thread(describe)
        info = tasks[0] if tasks else self._file_task(cluster, task)
        if info is None:
            raise ApiError("InvalidParameterException", f"task {task} not found in cluster {cluster}")
        arn = str(info.get("taskArn", task))
        listed = {str(e.get("taskArn")) for e in self._sandbox_tasks()}
        if tasks and listed and arn not in listed:
            raise ApiError("InvalidParameterException", f"task {task} is not a sandbox task ({ECS_TASKS_FILE})")
        if info.get("lastStatus", "RUNNING") != "RUNNING":
            raise ApiError("InvalidParameterException", f"task {task} is {info.get('lastStatus')}, not RUNNING")
        if not info.get("enableExecuteCommand", False):
            raise ApiError("InvalidParameterException",
                           "The execute command failed because execute command was not enabled when the task was run "
                           "or the execute command agent isn't running. Wait and try again or run a new task with "
                           "execute command enabled and try again.")
        containers = info.get("containers") or []
        cname = params.get("container") or (containers[0].get("name") if len(containers) == 1 else None)
        if not cname:
            raise ApiError("InvalidParameterException", "container is required when the task has several containers")
        container = next((c for c in containers if c.get("name") == cname), {"name": cname})
        owner = await self._owner(access_key, region)
        short = arn.rsplit("/", 1)[-1]
        # The target AWS names (and uses in the KMS encryption context): ecs:<cluster>_<task id>_<runtime id>.
        runtime = str(container.get("runtimeId") or f"{short}-{cname}")
        cluster_name = str(cluster).rsplit("/", 1)[-1]
        sess = Session(session_id=self._new_session_id(owner), target=f"ecs:{cluster_name}_{short}_{runtime}",
                       owner=owner, reason="", document=ECS_EXEC_DOCUMENT,
                       parameters={"command": [command]}, kind="shell",
                       command=agent_mod.shell_command(command), region=region,
                       kms_key_id=await self._exec_kms_key(region, str(cluster)))
        self.sessions[sess.session_id] = sess
        self._save()
        return {
            "clusterArn": info.get("clusterArn", cluster), "containerArn": container.get("containerArn", ""),
            "containerName": cname, "interactive": True, "taskArn": arn,
            "session": {"sessionId": sess.session_id, "streamUrl": self._stream_url(sess.session_id),
                        "tokenValue": sess.token},
        }

    # ---- data channel ----
    async def data_channel(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["session_id"]
        sess = self.sessions.get(sid)
        if sess is None or sess.status in ("Terminated", "Failed", "Terminating"):
            raise web.HTTPNotFound(text=f"session {sid} is not active")
        ws = web.WebSocketResponse(max_msg_size=0, compress=False, autoping=True)
        await ws.prepare(request)
        try:
            first = await asyncio.wait_for(ws.receive(), 15)
            opened = json.loads(first.data) if first.type == WSMsgType.TEXT else {}
        except (TimeoutError, ValueError):
            opened = {}
        if opened.get("TokenValue") != sess.token:
            await ws.close(code=4001, message=b"invalid token")
            return ws
        # A new websocket for a session replaces the old one (ResumeSession); the agent's side of the
        # session (its data channel, sequence numbers, TCP connections) carries on, as on AWS.
        old_ws = sess.ws
        sess.ws = None
        if old_ws is not None and not old_ws.closed:
            await old_ws.close()

        async def send_raw(frame: bytes) -> None:
            if frame[4:4 + len(_OUTPUT)] == _OUTPUT:
                sess.last_activity = time.monotonic()
            await ws.send_bytes(frame)

        async def finished(output: str) -> None:
            sess.details = output
            if sess.agent is agent or sess.agent is None:
                sess.agent = None
                self._mark_terminated(sess)
                current = sess.ws
                if current is not None:
                    await current.close()

        resumed = sess.agent is not None and not sess.agent.finished
        if resumed:
            assert sess.agent is not None
            agent = sess.agent
            agent.attach(send_raw)
        else:
            spec = SessionSpec(session_id=sid, kind=sess.kind, command=sess.command, cwd=str(self.state_dir),
                               target=sess.target, kms_key_id=sess.kms_key_id,
                               properties=self._session_properties(sess),
                               vpc_cidrs=await self._vpc_cidrs(sess) if sess.kind == "port" else ())
            agent = AgentConnection(spec=spec, send_raw=send_raw, state_dir=self.state_dir,
                                    agent_version=self.agent_version, profile=self.profile, loss=self.loss,
                                    on_finished=finished, kms_decrypt=self._kms_decrypt(sess.region))
        if sess.status in ("Terminated", "Failed", "Terminating"):
            # Terminated while this channel was opening (a client stopping right after StartSession; the
            # awaits above give TerminateSession its chance): the service does not bring it back to
            # Connected; the channel just closes (a new agent side was never started).
            await ws.close(code=1000, message=b"session terminated")
            return ws
        sess.agent, sess.ws, sess.status = agent, ws, "Connected"
        sess.ws_opened = time.monotonic()
        sess.websockets += 1
        self._ensure_timers()
        if not resumed:
            await agent.start()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    if msg.data[4:4 + len(_INPUT)] == _INPUT:
                        sess.last_activity = time.monotonic()
                    try:
                        await agent.receive(msg.data)
                    except framing.FramingError as exc:
                        print(f"ssm-endpoint: {sid}: {exc}", file=sys.stderr)
                    except ConnectionError:
                        break
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if sess.ws is ws:
                sess.ws = None
                if agent.finished or agent.terminate_requested:
                    await agent.stop()
                    sess.agent = None
                    self._mark_terminated(sess)
                elif sess.status == "Connected":
                    # Websocket gone without a terminate: the session stays resumable, as with AWS, and
                    # its agent side waits for the client (until the idle timeout ends it).
                    agent.detach()
                    sess.status = "Disconnected"
                    self._save()
        return ws

    async def _vpc_cidrs(self, sess: Session) -> tuple[str, ...]:
        """The relay's VPC CIDR blocks, as the agent reads them from instance metadata."""
        def fetch() -> tuple[str, ...]:
            instances = [i for i in self._relays_sync(sess.region, [sess.target]) if i.get("VpcId")]
            if not instances:
                return ()
            try:
                vpcs = self._boto("ec2", sess.region).describe_vpcs(VpcIds=[instances[0]["VpcId"]])["Vpcs"]
            except botocore.exceptions.ClientError:
                return ()
            blocks = [a["CidrBlock"] for v in vpcs for a in v.get("CidrBlockAssociationSet") or []]
            return tuple(blocks or [v["CidrBlock"] for v in vpcs if v.get("CidrBlock")])
        if not sess.target.startswith("i-"):
            return ()
        return await asyncio.to_thread(fetch)

    @staticmethod
    def _session_properties(sess: Session) -> dict[str, str]:
        """What the port documents' sessionProperties expand to (the plugin reads localPortNumber from here)."""
        if sess.kind != "port":
            return {}
        props = {"portNumber": (sess.parameters.get("portNumber") or [""])[0],
                 "type": agent_mod.PORT_DOCUMENTS.get(sess.document, "LocalPortForwarding"),
                 "localPortNumber": (sess.parameters.get("localPortNumber") or [""])[0]}
        if sess.document.endswith("ToRemoteHost") or "host" in sess.parameters:
            props["host"] = (sess.parameters.get("host") or [""])[0]
        return props

    # ---- what the service does by itself ----
    def _ensure_timers(self) -> None:
        if self._timers is None or self._timers.done():
            self._timers = asyncio.ensure_future(self._service_timers())

    async def _service_timers(self) -> None:
        """The hourly websocket close, the idle timeout and the maximum session duration, scaled."""
        while True:
            scale = self.time_scale
            await asyncio.sleep(min(1.0, max(0.01, 60 * scale / 20)))
            now = time.monotonic()
            for sess in list(self.sessions.values()):
                if sess.status in ("Terminated", "Failed", "Terminating"):
                    continue
                if sess.max_duration and now - sess.started_mono >= sess.max_duration * scale:
                    await self._terminate(sess, MAX_DURATION_ENDED)
                elif now - sess.last_activity >= sess.idle_timeout * scale:
                    await self._terminate(sess, IDLE_ENDED)
                elif sess.ws is not None and now - sess.ws_opened >= WEBSOCKET_LIFETIME * scale:
                    # No channel_closed: to the client this is a dropped connection, and it resumes.
                    ws, sess.ws_opened = sess.ws, now
                    with contextlib.suppress(Exception):
                        await ws.close(code=1001, message=b"data channel lifetime reached")

    # ---- test hooks ----
    async def hook_profile(self, request: web.Request) -> web.Response:
        """The agent profile of sessions started from now on (tests that say why they need `fast`)."""
        body = await request.json() if request.can_read_body else {}
        name = str(body.get("profile", self.profile.name))
        if name not in agent_mod.PROFILES:
            raise web.HTTPBadRequest(text=f"profile must be one of {sorted(agent_mod.PROFILES)}")
        self.profile = agent_mod.PROFILES[name]
        return web.json_response({"profile": name})

    async def hook_clock(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.time_scale = float(body.get("time_scale", self.time_scale))
        return web.json_response({"time_scale": self.time_scale})

    async def hook_drop(self, request: web.Request) -> web.Response:
        sess = self.sessions.get(request.match_info["session_id"])
        if sess is None or sess.ws is None:
            raise web.HTTPNotFound(text="no live websocket for that session")
        transport = sess.ws._req.transport if sess.ws._req is not None else None
        if transport is not None:
            transport.abort()  # no close frame: the client sees a dropped connection
        return web.json_response({"dropped": sess.session_id})

    async def hook_publication(self, request: web.Request) -> web.Response:
        sess = self.sessions.get(request.match_info["session_id"])
        action = request.match_info["action"]
        if sess is None or sess.ws is None or action not in ("pause", "start"):
            raise web.HTTPNotFound(text="no live websocket for that session")
        mtype = framing.PAUSE_PUBLICATION if action == "pause" else framing.START_PUBLICATION
        await sess.ws.send_bytes(framing.encode(framing.AgentMessage(message_type=mtype)))
        if sess.agent is not None:
            # The service pauses both directions: the agent stops publishing too.
            (sess.agent.channel.publishing.clear if action == "pause" else sess.agent.channel.publishing.set)()
        return web.json_response({"session": sess.session_id, "publication": action})

    async def hook_loss(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.loss.drop_every = int(body.get("drop_every", 0))
        self.loss.reorder_every = int(body.get("reorder_every", 0))
        return web.json_response(self._loss_view())

    def _loss_view(self) -> dict[str, int]:
        return {"drop_every": self.loss.drop_every, "reorder_every": self.loss.reorder_every,
                "dropped": self.loss.dropped, "reordered": self.loss.reordered}

    async def hook_agent_boot(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.agent_boot_seconds = float(body.get("seconds", 0))
        return web.json_response({"agent_boot_seconds": self.agent_boot_seconds})

    async def hook_stats(self, request: web.Request) -> web.Response:
        sess = self.sessions.get(request.match_info["session_id"])
        if sess is None:
            raise web.HTTPNotFound()
        out: dict[str, Any] = {"status": sess.status, "websockets": sess.websockets, **self._loss_view()}
        if sess.agent is not None:
            ch = sess.agent.channel
            plugin = type(sess.agent.plugin).__name__ if sess.agent.plugin else ""
            out.update({"plugin": plugin, "client_version": sess.agent.client_version, "resent": ch.resent,
                        "unacked": ch.unacked, "duplicates": ch.duplicates, "received_bytes": sess.agent.received,
                        "publishing": ch.publishing.is_set()})
        return web.json_response(out)

    async def shutdown(self, _app: web.Application) -> None:
        if self._timers is not None:
            self._timers.cancel()
        for sess in list(self.sessions.values()):
            if sess.agent is not None or sess.ws is not None:
                await self._terminate(sess, "endpoint shutting down")
        if self._http is not None:
            await self._http.close()


def _ts(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def make_app(endpoint: Endpoint) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/data-channel/{session_id}", endpoint.data_channel)
    app.router.add_post("/_sandbox/sessions/{session_id}/drop", endpoint.hook_drop)
    app.router.add_post("/_sandbox/sessions/{session_id}/publication/{action}", endpoint.hook_publication)
    app.router.add_get("/_sandbox/sessions/{session_id}", endpoint.hook_stats)
    app.router.add_post("/_sandbox/loss", endpoint.hook_loss)
    app.router.add_post("/_sandbox/agent-boot", endpoint.hook_agent_boot)
    app.router.add_post("/_sandbox/clock", endpoint.hook_clock)
    app.router.add_post("/_sandbox/profile", endpoint.hook_profile)
    app.router.add_route("*", "/{tail:.*}", endpoint.handle_root)
    app.on_shutdown.append(endpoint.shutdown)
    return app


async def serve(*, host: str, port: int, moto_url: str, state_dir: Path, agent_version: str,
                profile: str = agent_mod.DEFAULT_PROFILE, time_scale: float = 1.0,
                ready: asyncio.Future[str] | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever). Sets `ready` to the base URL once listening."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("the sandbox Session Manager endpoint listens on loopback only")
    state_dir.mkdir(parents=True, exist_ok=True)
    endpoint = Endpoint(moto_url=moto_url, state_dir=state_dir, agent_version=agent_version,
                        profile=agent_mod.PROFILES[profile], time_scale=time_scale)
    # Shutdown has already terminated every session (channel_closed sent): a client that never closes its
    # websocket must not hold the endpoint for aiohttp's default 60 s (a test's loop close failed on that).
    runner = web.AppRunner(make_app(endpoint), access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # The same app over TLS, on its own port, for the data channel (the clients trust <state>/tls/ca.pem).
    ca = sandbox_tls.SandboxCA(state_dir)
    tls_site = web.TCPSite(runner, host, 0, ssl_context=ca.server_context(host))
    await tls_site.start()
    endpoint.base_url = f"http://{host}:{_bound_port(site)}"
    endpoint.stream_base = f"wss://{host}:{_bound_port(tls_site)}"
    proxy = await asyncio.start_server(lambda r, w: _aws_api_proxy(r, w, ca, endpoint.moto_url), host, 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    (state_dir / sandbox_tls.PROXY_FILE).write_text(f"http://{host}:{proxy_port}\n")
    if ready is not None:
        ready.set_result(endpoint.base_url)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        proxy.close()
        await runner.cleanup()


async def _aws_api_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ca: sandbox_tls.SandboxCA,
                         moto_url: str) -> None:
    """An HTTPS proxy for clients that call AWS APIs on their default hosts: the session-manager-plugin
    asks KMS for the data key of an encrypted shell at kms.<region>.amazonaws.com, with no way to name
    another endpoint. CONNECT to *.amazonaws.com:443 is answered here with a certificate from the sandbox
    CA and the requests go to moto; nothing else is proxied."""
    from urllib.parse import urlsplit

    try:
        request = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        method, target, _ = request.split("\r\n", 1)[0].split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or port != "443" or not host.endswith(".amazonaws.com"):
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        await writer.start_tls(ca.server_context(host))
        moto = urlsplit(moto_url)
        up_reader, up_writer = await asyncio.open_connection(moto.hostname, moto.port)
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        writer.close()
        return

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--moto-url", required=True, help="moto server URL (everything not emulated goes there)")
    parser.add_argument("--state-dir", required=True, type=Path, help="sandbox state directory")
    parser.add_argument("--agent-version",
                        default=os.environ.get(SANDBOX_AGENT_VERSION_ENV, SANDBOX_AGENT_VERSION),
                        help="agent version to announce (e.g. 3.0.161.0 to emulate an agent without smux)")
    parser.add_argument("--profile", choices=sorted(agent_mod.PROFILES),
                        default=os.environ.get("BASTIONLESS_SANDBOX_PROFILE", agent_mod.DEFAULT_PROFILE),
                        help="agent pace: faithful (1 KiB messages, 1 ms apart, as amazon-ssm-agent) or fast")
    parser.add_argument("--time-scale", type=float,
                        default=float(os.environ.get("BASTIONLESS_SANDBOX_TIME_SCALE", "1")),
                        help="sandbox seconds per AWS second for the service's hourly close, idle and "
                             "maximum-duration timers")
    args = parser.parse_args(argv)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready: asyncio.Future[str] = loop.create_future()
        ready.add_done_callback(lambda f: print(f"READY {f.result()}", flush=True))
        await serve(host=args.host, port=args.port, moto_url=args.moto_url, state_dir=args.state_dir,
                    agent_version=args.agent_version, profile=args.profile, time_scale=args.time_scale,
                    ready=ready, stop=stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()

