"""Find an environment's relay instance and database through the AWS APIs (no Terraform state needed).

On-call engineers often have only credentials and the environment name: the relay is found by its
tags, its Session Manager reachability by `DescribeInstanceInformation`, the database by its RDS
identifier (`bastionless-<env>`). Every failure is one line naming the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import botocore.exceptions

from ops import aws, facts
from ops.config import EnvConfig
from ops.errors import CredentialsError, OpsError
from ops.facts import ENV_TAG, RELAY_ROLE, ROLE_TAG

T = TypeVar("T")

# Error codes AWS uses for credentials that are missing, wrong or expired (STS, SSO, assumed roles).
_CREDENTIAL_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId", "UnrecognizedClientException",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthFailure", "InvalidToken", "IncompleteSignature",
})
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


class RelayNotReadyError(OpsError):
    """No relay, or the relay is stopped or not connected to Session Manager."""


class DatabaseNotAvailableError(OpsError):
    """The RDS instance is missing or not in the `available` state."""


@dataclass(frozen=True)
class RelayInfo:
    instance_id: str
    state: str
    ping_status: str
    agent_version: str


@dataclass(frozen=True)
class DatabaseInfo:
    identifier: str
    address: str
    port: int
    name: str
    username: str
    secret_arn: str
    status: str
    deletion_protection: bool


def relay_name(cfg: EnvConfig) -> str:
    return facts.relay_name(cfg.stack_name)


def aws_call(cfg: EnvConfig, what: str, call: Callable[[], T], *, passthrough: tuple[str, ...] = ()) -> T:
    """Run one AWS call; failures become one line with the fix, except error codes in `passthrough`."""
    login = "aws sso login (or export AWS_PROFILE=... / refresh your credentials)"
    if cfg.sandbox:
        login = "invoke sandbox up (the sandbox uses fixed test credentials)"
    try:
        return call()
    except botocore.exceptions.ProfileNotFound as exc:
        raise CredentialsError(f"AWS profile {exc.kwargs.get('profile', '')!r} does not exist",
                               next_step="aws configure list-profiles, then export AWS_PROFILE=<one of them>") from None
    except botocore.exceptions.NoCredentialsError:
        raise CredentialsError("no AWS credentials found", next_step=login) from None
    except (botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOTokenLoadError,
            botocore.exceptions.UnauthorizedSSOTokenError):
        raise CredentialsError("the AWS SSO session has expired", next_step="aws sso login") from None
    except (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError) as exc:
        # Connect refused/timed out, or no answer within aws.API_READ_TIMEOUT: seconds, not minutes.
        raise OpsError(f"cannot reach the AWS API for {what} ({exc.kwargs.get('endpoint_url', '')})",
                       next_step="check your network" if not cfg.sandbox else "invoke sandbox up") from None
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in _CREDENTIAL_CODES:
            raise CredentialsError(f"AWS rejected the credentials for {what} ({code}: they are invalid or expired)",
                                   next_step=login) from None
        if code in _DENIED_CODES:
            raise CredentialsError(f"{what} was denied ({code}); your identity lacks the permission",
                                   next_step=f"assume the developer role {cfg.stack_name}-developer "
                                             f"(output developer_role_arn), then retry") from None
        if code in passthrough:
            raise
        raise OpsError(f"{what} failed: {code}: {err.get('Message', '')}".rstrip(": "),
                       next_step=f"invoke doctor --env {cfg.name}") from None


def find_relay(cfg: EnvConfig, *, instance_id: str = "") -> RelayInfo:
    """The environment's running relay whose SSM agent is Online (`instance_id` overrides the tag lookup)."""
    ec2 = aws_call(cfg, "the EC2 client", lambda: aws.client(cfg, "ec2"))
    where = f"in {cfg.region}"
    if instance_id:
        kwargs: dict[str, Any] = {"InstanceIds": [instance_id]}
        what = f"relay {instance_id}"
    else:
        kwargs = {"Filters": [{"Name": f"tag:{ENV_TAG}", "Values": [cfg.name]},
                              {"Name": f"tag:{ROLE_TAG}", "Values": [RELAY_ROLE]},
                              {"Name": "tag:Name", "Values": [relay_name(cfg)]}]}
        what = f"a running instance tagged Name={relay_name(cfg)}, {ENV_TAG}={cfg.name}, {ROLE_TAG}={RELAY_ROLE}"
    try:
        pages = aws_call(cfg, "ec2:DescribeInstances", lambda: ec2.describe_instances(**kwargs),
                         passthrough=("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"))
    except botocore.exceptions.ClientError:  # only the passthrough codes arrive here
        raise RelayNotReadyError(f"no instance {instance_id} {where}",
                                 next_step="check --instance, or drop it to find the relay by its tags") from None
    instances = [i for r in pages.get("Reservations", []) for i in r.get("Instances", [])
                 if i.get("State", {}).get("Name") not in ("terminated", "shutting-down")]
    if not instances:
        raise RelayNotReadyError(f"no relay found for {cfg.name} {where} (looked for {what})",
                                 next_step=f"invoke deploy --env {cfg.name} (or check the region and account)")
    running = [i for i in instances if i.get("State", {}).get("Name") == "running"]
    if not running:
        inst = instances[0]
        iid, state = inst["InstanceId"], inst.get("State", {}).get("Name", "unknown")
        raise RelayNotReadyError(
            f"relay {iid} is {state}",
            next_step=f"aws ec2 start-instances --instance-ids {iid} --region {cfg.region}, wait a minute, retry")
    # Several running relays (e.g. during a replacement): the newest is the one Terraform now manages.
    running.sort(key=lambda i: str(i.get("LaunchTime", "")), reverse=True)
    iid = str(running[0]["InstanceId"])
    ssm = aws_call(cfg, "the SSM client", lambda: aws.client(cfg, "ssm"))
    info = aws_call(cfg, "ssm:DescribeInstanceInformation", lambda: ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [iid]}]))
    found = [x for x in info.get("InstanceInformationList", []) if x.get("InstanceId") == iid]
    if not found:
        raise RelayNotReadyError(
            f"relay {iid} is running but not registered with Session Manager (its SSM agent never connected)",
            next_step=f"invoke doctor --env {cfg.name} (agent, instance role, route to the ssm endpoints)")
    ping = str(found[0].get("PingStatus", ""))
    if ping != "Online":
        raise RelayNotReadyError(
            f"relay {iid} is running but offline in Session Manager (PingStatus {ping or 'unknown'})",
            next_step=f"wait a minute after a start, else invoke doctor --env {cfg.name} or reboot the relay: "
                      f"aws ec2 reboot-instances --instance-ids {iid} --region {cfg.region}")
    return RelayInfo(instance_id=iid, state="running", ping_status=ping,
                     agent_version=str(found[0].get("AgentVersion", "")))


def find_database(cfg: EnvConfig) -> DatabaseInfo:
    """The environment's RDS instance, which must be `available`."""
    rds = aws_call(cfg, "the RDS client", lambda: aws.client(cfg, "rds"))
    ident = cfg.stack_name
    try:
        found = aws_call(cfg, "rds:DescribeDBInstances", lambda: rds.describe_db_instances(DBInstanceIdentifier=ident),
                         passthrough=("DBInstanceNotFound", "DBInstanceNotFoundFault"))
    except botocore.exceptions.ClientError:  # only the passthrough codes arrive here
        raise DatabaseNotAvailableError(
            f"database {ident} not found in {cfg.region}",
            next_step=f"invoke deploy --env {cfg.name} (or check the region and account)") from None
    db = found["DBInstances"][0]
    status = str(db.get("DBInstanceStatus", ""))
    endpoint = db.get("Endpoint") or {}
    if status != "available" or not endpoint.get("Address"):
        fix = {"stopped": f"aws rds start-db-instance --db-instance-identifier {ident} --region {cfg.region}, "
                          f"then wait until it is available (minutes)",
               "stopping": "wait until it has stopped, then start it again"}.get(
            status, f"wait until it is available: aws rds wait db-instance-available --db-instance-identifier {ident}")
        raise DatabaseNotAvailableError(f"database {ident} is not available (status {status or 'unknown'})",
                                        next_step=fix)
    secret = db.get("MasterUserSecret") or {}
    return DatabaseInfo(identifier=ident, address=str(endpoint["Address"]),
                        port=int(endpoint.get("Port") or cfg.database.port),
                        name=str(db.get("DBName") or cfg.database.name),
                        username=str(db.get("MasterUsername") or cfg.database.username),
                        secret_arn=str(secret.get("SecretArn", "")), status=status,
                        deletion_protection=bool(db.get("DeletionProtection", False)))


def database_override(cfg: EnvConfig, host: str) -> DatabaseInfo:
    """`--host H[:PORT]`: forward to that address instead of asking RDS (a replica, a proxy, a restored copy)."""
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    if not name or (port and not port.isdigit()):
        raise OpsError(f"--host {host!r} is not HOST or HOST:PORT", next_step="e.g. --host mydb.abc.rds.amazonaws.com")
    return DatabaseInfo(identifier="", address=name, port=int(port or cfg.database.port), name=cfg.database.name,
                        username=cfg.database.username, secret_arn="", status="override",
                        deletion_protection=False)
