"""moto server with IAM enforced: `python -m ops.sandbox.moto_iam -H 127.0.0.1 -p PORT`.

moto's access control (on with `INITIAL_NO_AUTH_ACTION_COUNT=0`) authenticates every request: the access
key must belong to an IAM user or an assumed role of the emulator and the SigV4 signature must verify.
Its authorization, though, matches actions only (every resource is "*" for most services and conditions
are skipped), so this launcher replaces that one step: the caller's identity policies are evaluated by
ops.sandbox.iam_eval against the resource ARNs and condition keys of the request, computed below from
its parameters the way AWS names them (the secret's ARN, the KMS key's ARN, the ECS cluster, ...).

Two exceptions, both the emulator's own plumbing rather than a task's identity:
- the access key `testing` (EMULATOR_ADMIN_KEY) is the emulator itself: the sandbox manager doing what
  RDS or ECS would do behind the scenes (the RDS-managed secret, the tasks moto cannot run), our Session
  Manager endpoint reading moto, and test fixtures arranging AWS-side state. Tasks never use it: they
  run as the developer, auditor or deployer identities (ops.aws);
- `POST /_bastionless/authorize` (loopback only, like moto's own /moto-api/) lets our Session Manager
  endpoint evaluate the calls it serves against the same policies.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ops.facts import PREFERENCES_DOCUMENT
from ops.sandbox import iam_eval, moto

EMULATOR_ADMIN_KEY = "testing"
AUTHORIZE_PATH = "/_bastionless/authorize"
PROBE_PATH = "/_bastionless/iam"  # GET: {"enforced": true}; a plain moto_server does not have it
# moto names a request's action by the service's signing name; IAM by its service prefix, where they differ.
IAM_PREFIX = {"monitoring": "cloudwatch"}
_KEY_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/")


def _values(resp: Any, name: str) -> list[str]:
    """A request parameter as strings, whatever the protocol (query `Name`/`Name.N`, or a JSON body)."""
    found: list[str] = []
    query = getattr(resp, "querystring", None) or {}
    for key, vals in query.items():
        if key == name or re.fullmatch(rf"{re.escape(name)}\.(member\.)?\d+", key):
            found += [str(v) for v in vals]
    if not found and getattr(resp, "body", None):
        try:
            body = json.loads(resp.body)
        except (ValueError, TypeError):
            body = None
        if isinstance(body, dict) and name in body:
            raw = body[name]
            found = [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
    return found


def _ecs_cluster_arn(region: str, account: str, cluster: str) -> str:
    return cluster if cluster.startswith("arn:") else f"arn:aws:ecs:{region}:{account}:cluster/{cluster or 'default'}"


def request_scope(service: str, action: str, region: str, account: str,
                  param: Callable[[str], list[str]], backends: Any = None) -> tuple[list[str], dict[str, list[str]]]:
    """Resource ARNs and condition keys of one request, for the actions the project's policies scope.

    Anything not listed keeps resource "*", which is what AWS uses for actions without resource-level
    permissions (Describe*/List* of EC2, ssm:DescribeInstanceInformation, cloudtrail:LookupEvents...).
    """
    resources: list[str] = []
    context: dict[str, list[str]] = {}
    if service == "secretsmanager":
        for sid in param("SecretId"):
            resources.append(_secret_arn(sid, region, account, backends))
    elif service == "kms":
        for kid in param("KeyId"):
            resources.append(_key_arn(kid, region, account, backends))
    elif service == "rds":
        for db in param("DBInstanceIdentifier"):
            resources.append(db if db.startswith("arn:") else f"arn:aws:rds:{region}:{account}:db:{db}")
    elif service == "ssm":
        for target in param("Target") + param("InstanceId") + param("InstanceIds"):
            resources.append(f"arn:aws:ec2:{region}:{account}:instance/{target}" if target.startswith("i-")
                             else f"arn:aws:ssm:{region}:{account}:managed-instance/{target}")
        if action == "StartSession":
            document = (param("DocumentName") or [PREFERENCES_DOCUMENT])[0]
            resources.append(document_arn(document, region, account))
        for sid in param("SessionId"):
            resources.append(f"arn:aws:ssm:{region}:{account}:session/{sid}")
        for name in param("Name"):
            if action in ("GetDocument", "DescribeDocument", "UpdateDocument", "DeleteDocument",
                          "UpdateDocumentDefaultVersion", "DescribeDocumentPermission"):
                resources.append(document_arn(name, region, account))
            elif name.startswith("/") or action.startswith(("GetParameter", "PutParameter", "DeleteParameter")):
                resources.append(f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}")
    elif service == "ec2" and action == "DescribeVpcAttribute":
        resources += [f"arn:aws:ec2:{region}:{account}:vpc/{vpc}" for vpc in param("VpcId")]
    elif service == "ecs":
        clusters = param("cluster")
        if action == "DescribeClusters":
            resources += [_ecs_cluster_arn(region, account, c) for c in param("clusters") or ["default"]]
        elif action in ("ListTasks", "DescribeTasks", "ListServices", "DescribeServices", "ExecuteCommand",
                        "UpdateService", "RunTask", "StopTask", "DescribeContainerInstances"):
            cluster_arn = _ecs_cluster_arn(region, account, clusters[0] if clusters else "default")
            context["ecs:cluster"] = [cluster_arn]
            name = cluster_arn.rsplit("/", 1)[-1]
            for task in param("tasks") + param("task"):
                resources.append(task if task.startswith("arn:")
                                 else f"arn:aws:ecs:{region}:{account}:task/{name}/{task}")
            for svc in param("services") + param("service"):
                resources.append(svc if svc.startswith("arn:")
                                 else f"arn:aws:ecs:{region}:{account}:service/{name}/{svc}")
            if action == "ExecuteCommand":
                resources.append(cluster_arn)
                context["ecs:container-name"] = param("container")
            for ci in param("containerInstances"):
                resources.append(ci if ci.startswith("arn:")
                                 else f"arn:aws:ecs:{region}:{account}:container-instance/{name}/{ci}")
            if action == "ListTasks":
                resources.append(f"arn:aws:ecs:{region}:{account}:container-instance/{name}/*")
    elif service == "iam":
        for role in param("RoleName"):
            resources.append(f"arn:aws:iam::{account}:role/{role}")
        for profile in param("InstanceProfileName"):
            resources.append(f"arn:aws:iam::{account}:instance-profile/{profile}")
        for user in param("UserName"):
            resources.append(f"arn:aws:iam::{account}:user/{user}")
        if action == "CreatePolicy":  # the request names the policy, not its ARN; IAM checks the ARN to be
            for name in param("PolicyName"):
                path = (param("Path") or ["/"])[0]
                resources.append(f"arn:aws:iam::{account}:policy{path}{name}")
        for arn in param("PolicyArn"):
            if action.startswith(("Attach", "Detach")):
                context["iam:PolicyARN"] = [arn]  # the resource is the role/user/group; the policy a condition
            elif not resources:
                resources.append(arn)
        resources += param("PolicySourceArn")
    elif service == "sts" and action == "AssumeRole":
        resources += param("RoleArn")
    return resources, context


def document_arn(name: str, region: str, account: str) -> str:
    """AWS-owned documents (AWS-*, Amazon*) have no account in their ARN."""
    owner = "" if name.startswith(("AWS-", "AWSEC2-", "AWSSSO-", "Amazon")) else account
    return name if name.startswith("arn:") else f"arn:aws:ssm:{region}:{owner}:document/{name}"


def _secret_arn(sid: str, region: str, account: str, backends: Any) -> str:
    if sid.startswith("arn:"):
        return sid
    try:
        secret = backends.secretsmanager[account][region].describe_secret(sid)
        return str(secret.arn)
    except Exception:  # an unknown secret: AWS evaluates the name-based ARN
        return f"arn:aws:secretsmanager:{region}:{account}:secret:{sid}"


def _key_arn(kid: str, region: str, account: str, backends: Any) -> str:
    if kid.startswith("arn:") and ":key/" in kid:
        return kid
    try:
        return str(backends.kms[account][region].describe_key(kid).arn)
    except Exception:  # an unknown key or alias: evaluated as the ARN AWS would use
        return f"arn:aws:kms:{region}:{account}:{kid if kid.startswith('alias/') else 'key/' + kid}"


class _Backends:
    """moto's in-process stores, imported only inside the moto process."""

    @property
    def secretsmanager(self) -> Any:
        from moto.secretsmanager.models import secretsmanager_backends
        return secretsmanager_backends

    @property
    def kms(self) -> Any:
        from moto.kms.models import kms_backends
        return kms_backends


def principal_of(access_key: Any, account: str) -> iam_eval.Principal:
    """moto's resolved access key (IAM user or assumed role) as an iam_eval.Principal."""
    from moto.iam.access_control import IAMPolicy

    policies = tuple(IAMPolicy(p)._policy_json for p in access_key.collect_policies())
    arn = str(access_key.arn)
    backend = access_key.backend
    if ":assumed-role/" in arn:
        role_name = arn.split(":assumed-role/")[1].split("/")[0]
        userid = f"{backend.get_role(role_name).id}:{arn.rsplit('/', 1)[-1]}"
    else:
        userid = str(backend.get_user(arn.rsplit("/", 1)[-1]).id)
    return iam_eval.Principal(arn=arn, userid=userid, account=account, policies=policies)


_TOKEN_CODE_RE = re.compile(r"^\d{6}$")


def mfa_context(serials: list[str], codes: list[str], caller_devices: Iterable[str]) -> dict[str, list[str]]:
    """What AssumeRole with SerialNumber + TokenCode puts into the trust evaluation (the break-glass role's
    MFA conditions): MFA present, authenticated just now. The emulator cannot check a TOTP code, so it
    checks what it can: the device is one enabled on the calling IAM user and the code has six digits.
    Anything else: no MFA keys at all, so `Bool aws:MultiFactorAuthPresent` fails as it does on AWS."""
    if len(serials) == 1 and len(codes) == 1 and serials[0] in set(caller_devices) \
            and _TOKEN_CODE_RE.match(codes[0]):
        return {"aws:MultiFactorAuthPresent": ["true"], "aws:MultiFactorAuthAge": ["0"]}
    return {}


def _user_mfa_devices(backend: Any, arn: str) -> list[str]:
    if ":user/" not in arn:
        return []  # assumed roles bring their MFA from their own AssumeRole, which moto does not keep
    try:
        return list(backend.get_user(arn.rsplit("/", 1)[-1]).mfa_devices)
    except Exception:  # no such user: no devices
        return []


def _trust_policy(backend: Any, role_arn: str) -> dict[str, Any] | None:
    try:
        role = backend.get_role_by_arn(role_arn)
    except Exception:  # no such role: AssumeRole is refused, as on AWS
        return None
    doc = role.assume_role_policy_document
    parsed: dict[str, Any] = json.loads(doc) if isinstance(doc, str) else doc
    return parsed


def _install() -> None:
    from moto.core.authorization import ActionAuthenticatorMixin

    original = ActionAuthenticatorMixin._authenticate_and_authorize_action
    backends = _Backends()

    def authenticate_and_authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        from moto import settings

        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            original(self, iam_request_cls, resource)
            return
        match = _KEY_RE.search(self.headers.get("Authorization", ""))
        if match is None or match.group(1) == EMULATOR_ADMIN_KEY:
            if match is None and self.headers.get("X-Amz-Target") not in ActionAuthenticatorMixin.PUBLIC_OPERATIONS:
                original(self, iam_request_cls, resource)  # unsigned: moto refuses it as AWS would
            return
        path = self.raw_path + (("?" + self.uri.split("?", 1)[1]) if "?" in self.uri else "")
        request = iam_request_cls(account_id=self.current_account, method=self.method, path=path, data=self.data,
                                  body=self.raw_body, headers=self.headers, action=self._get_action())
        request.check_signature()
        signing_name, action = request._action.split(":", 1)
        service = IAM_PREFIX.get(signing_name, signing_name)
        iam_action = f"{service}:{action}"
        if iam_action == "sts:GetCallerIdentity":
            return
        principal = principal_of(request._access_key, self.current_account)
        region = match.group(2)
        resources, context = request_scope(service, action, region, self.current_account,
                                           lambda name: _values(self, name), backends)
        if not resources:
            resources = [resource]
        outcome = iam_eval.authorize(principal, iam_eval.Request(iam_action, tuple(resources), context))
        if outcome.allowed and iam_action == "sts:AssumeRole":
            trust = _trust_policy(request.backend, resources[0])
            mfa = mfa_context(_values(self, "SerialNumber"), _values(self, "TokenCode"),
                              _user_mfa_devices(request.backend, principal.arn))
            outcome = (iam_eval.trust_allows(trust, principal, context=mfa) if trust is not None
                       else iam_eval.Outcome(iam_eval.Decision.IMPLICIT_DENY, iam_action, resources[0]))
        if not outcome.allowed:
            message = iam_eval.denial_message(principal, outcome)
            sys.stderr.write(f"moto-iam: {message} ({outcome.why})\n")
            if self.headers.get("X-Amz-Target"):
                # JSON-protocol services (Secrets Manager, KMS, SSM, ECS...) answer AccessDeniedException in JSON.
                from moto.core.exceptions import JsonRESTError

                raise JsonRESTError("AccessDeniedException", message)
            request._raise_access_denied()

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate_and_authorize  # type: ignore[method-assign]


def authorize_over_http(body: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's question: may this access key do `action` on `resources` with `context`?"""
    from moto import settings
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.iam.access_control import CreateAccessKeyFailure, create_access_key

    key = str(body.get("access_key") or "")
    if settings.INITIAL_NO_AUTH_ACTION_COUNT != 0 or key == EMULATOR_ADMIN_KEY:
        return {"enforced": False, "allowed": True}
    headers = {"X-Amz-Security-Token": str(body["session_token"])} if body.get("session_token") else {}
    try:
        access_key = create_access_key(DEFAULT_ACCOUNT_ID, "aws", key, headers)
    except CreateAccessKeyFailure:
        return {"enforced": True, "allowed": False, "code": "UnrecognizedClientException",
                "message": "The security token included in the request is invalid."}
    principal = principal_of(access_key, DEFAULT_ACCOUNT_ID)
    action = str(body["action"])
    params = body.get("params") or {}
    resources, context = request_scope(action.split(":")[0], action.split(":", 1)[1], str(body.get("region")),
                                       DEFAULT_ACCOUNT_ID, lambda name: _strings(params.get(name)), _Backends())
    context.update({str(k): _strings(v) for k, v in (body.get("context") or {}).items()})
    request = iam_eval.Request(action, tuple(resources or ["*"]), context)
    outcome = iam_eval.authorize(principal, request)
    reply: dict[str, Any] = {"enforced": True, "allowed": outcome.allowed, "principal": principal.arn,
                             "userid": principal.userid}
    if not outcome.allowed:
        reply.update({"code": "AccessDeniedException", "message": iam_eval.denial_message(principal, outcome),
                      "why": outcome.why})
    return reply


def _strings(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


_one_at_a_time = threading.Lock()


def _with_authorize_route(app: moto.Wsgi) -> moto.Wsgi:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PROBE_PATH:
            probe = json.dumps({"enforced": True}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(probe)))])
            return [probe]
        if environ.get("PATH_INFO") != AUTHORIZE_PATH or environ.get("REQUEST_METHOD") != "POST":
            # One request at a time, as each AWS call is atomic: moto's backends are not thread-safe and
            # terraform sends ten calls at once. moto's work is Python under the GIL, so little is lost.
            with _one_at_a_time:
                return list(app(environ, start_response))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            reply = authorize_over_http(json.loads(environ["wsgi.input"].read(length) or b"{}"))
            status = "200 OK"
        except (ValueError, KeyError, TypeError) as exc:
            reply, status = {"error": f"bad authorize request: {exc}"}, "400 Bad Request"
        payload = json.dumps(reply).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]
    return wsgi


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("-p", "--port", type=int, required=True, help="port to listen on")
    args = parser.parse_args(argv)
    # Read by moto.settings at import time: authenticate and authorize from the first request on.
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    os.environ.setdefault("MOTO_PORT", str(args.port))
    _install()
    moto.serve(args.host, args.port, wrap=_with_authorize_route)


if __name__ == "__main__":
    main()
