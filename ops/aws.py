"""AWS clients for an environment: the real AWS, or the sandbox's local endpoints.

All of `ops` gets its clients here, so the sandbox runs exactly the code path prod runs; only
the endpoint URLs and the (fake) credentials differ, and only for an env with `sandbox = true`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.config import Config

from ops.config import PROJECT_ROOT, EnvConfig
from ops.errors import AccountMismatchError, CredentialsError, OpsError
from ops.facts import STATE_DIR_ENV, partition


def state_dir() -> Path:
    """Where the sandbox keeps its pids, ports and data (and tunnels their state); tests point it elsewhere."""
    path = Path(os.environ.get(STATE_DIR_ENV, PROJECT_ROOT / ".sandbox"))
    if path.exists() and not path.is_dir():
        raise OpsError(f"the state directory {path} is a file, not a directory",
                       next_step=f"move {path} away, or export BASTIONLESS_STATE_DIR=<a directory>")
    return path


ENDPOINTS_FILE = "endpoints.json"
# The emulator's own key (ops.sandbox.moto_iam): what the sandbox uses where AWS itself would act.
SANDBOX_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# Written by `sandbox up` (0600): the access keys of the sandbox's engineer and deployer IAM users.
IDENTITIES_FILE = "iam.json"

# Who a task acts as. On AWS that is whatever the caller's credentials are; in the sandbox, where IAM is
# enforced, each task runs as the identity it would have on AWS: developers' tasks assume the developer
# role, `audit` the auditor role, deploy/plan and the relay's on-call tasks use the deployer identity,
# "emulator" is the sandbox acting as an AWS service (the RDS-managed secret, ECS tasks), and "break-glass"
# is the stack's break-glass role (MFA), assumed on AWS too: the only reader of the master secret.
Identity = Literal["developer", "auditor", "deployer", "emulator", "break-glass"]
BREAK_GLASS: Identity = "break-glass"
# For IAM users: the MFA device to present when assuming the break-glass role (else the profile's mfa_serial).
MFA_SERIAL_ENV = "BASTIONLESS_MFA_SERIAL"
P = ParamSpec("P")
T = TypeVar("T")
_acting: ContextVar[Identity] = ContextVar("bastionless_acting_as", default="developer")
_assumed: dict[tuple[str, str, str], dict[str, str]] = {}


@contextlib.contextmanager
def acting_as(identity: Identity) -> Iterator[None]:
    """Run the block as `identity` (only the sandbox distinguishes; on AWS the caller's credentials decide)."""
    token = _acting.set(identity)
    try:
        yield
    finally:
        _acting.reset(token)


def runs_as(identity: Identity) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of acting_as, for a task's ops entry point."""
    def wrap(func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            with acting_as(identity):
                return func(*args, **kwargs)
        return inner
    return wrap


def role_name(cfg: EnvConfig, identity: Identity) -> str:
    """The stack's role for a developer/auditor/break-glass identity (stacks/access.py, stacks/db_identity.py)."""
    return f"{cfg.stack_name}-{identity}"


def sandbox_credentials(cfg: EnvConfig, identity: Identity | None = None) -> dict[str, str]:
    """Keyword credentials (new_session, create_client) of `identity` (default: the current one) in the sandbox.

    A state dir without identities (a bare emulator some tests start) has no IAM to enforce: the
    emulator's own key then."""
    who = identity or _acting.get()
    path = state_dir() / IDENTITIES_FILE
    try:
        keys = json.loads(path.read_text())
    except FileNotFoundError:
        return dict(SANDBOX_CREDENTIALS)
    except ValueError:
        raise SandboxNotRunningError(f"{path} is damaged",
                                     next_step="invoke sandbox down && invoke sandbox up") from None
    if who == "emulator":
        return dict(SANDBOX_CREDENTIALS)
    if who == "deployer":
        return {"aws_access_key_id": keys["deployer"]["key"], "aws_secret_access_key": keys["deployer"]["secret"]}
    engineer = keys["engineer"]
    role_arn = _role_arn(cfg, who)
    cache_key = (str(path), role_arn, engineer["key"])
    if cache_key not in _assumed:
        engineer_session = new_session(region_name=cfg.region, aws_access_key_id=engineer["key"],
                                       aws_secret_access_key=engineer["secret"])
        sts = engineer_session.client("sts", endpoint_url=endpoint_for(cfg, "sts"),
                                      config=api_config(connect_timeout=5, read_timeout=15))
        mfa: dict[str, str] = {}
        if who == BREAK_GLASS and engineer.get("mfa_serial"):
            # The engineer's authenticator app: a code from the sandbox MFA device's seed (ops/sandbox/mfa.py).
            from ops.sandbox import mfa as sandbox_mfa

            mfa = {"SerialNumber": engineer["mfa_serial"], "TokenCode": sandbox_mfa.code(engineer["mfa_seed"])}
        try:
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=engineer.get("session", "engineer"),
                                    **mfa)["Credentials"]
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if who == BREAK_GLASS:
                raise _break_glass_refused(cfg, role_arn, code) from None
            raise CredentialsError(f"cannot assume the {who} role {role_arn} in the sandbox ({code})",
                                   next_step=f"invoke deploy --env {cfg.name} --yes") from None
        _assumed[cache_key] = {"aws_access_key_id": creds["AccessKeyId"],
                               "aws_secret_access_key": creds["SecretAccessKey"],
                               "aws_session_token": creds["SessionToken"]}
    return dict(_assumed[cache_key])


def _role_arn(cfg: EnvConfig, identity: Identity) -> str:
    return f"arn:{partition(cfg.region)}:iam::{cfg.account_id}:role/{role_name(cfg, identity)}"


class BreakGlassRefusedError(CredentialsError):
    pass


def _break_glass_refused(cfg: EnvConfig, role_arn: str, code: str) -> BreakGlassRefusedError:
    return BreakGlassRefusedError(
        f"you may not assume the break-glass role {role_arn} ({code or 'refused'}): only "
        f"access.break_glass_principals of envs/{cfg.name}.toml may, with MFA",
        next_step=f"ask an owner of {cfg.name} to add you there, or connect as yourself: drop --break-glass")


def _break_glass_session(cfg: EnvConfig) -> Session:
    """On AWS: assume the env's break-glass role with your own credentials, presenting your MFA device
    (IAM users: $BASTIONLESS_MFA_SERIAL or the profile's mfa_serial; the code is asked for). Cached per process."""
    import getpass
    import sys

    base = new_session(region_name=cfg.region)
    role_arn = _role_arn(cfg, BREAK_GLASS)
    cache_key = ("aws", role_arn, "")
    if cache_key not in _assumed:
        serial = os.environ.get(MFA_SERIAL_ENV) or str(base.scoped_config().get("mfa_serial") or "")
        mfa: dict[str, str] = {}
        if serial:
            if not sys.stdin.isatty():
                raise CredentialsError(f"the break-glass role needs a code from your MFA device {serial}, and there "
                                       "is no terminal to ask for it", next_step="rerun in a terminal")
            mfa = {"SerialNumber": serial, "TokenCode": getpass.getpass(f"MFA code for {serial}: ").strip()}
        sts = base.client("sts", config=api_config())
        try:
            who = str(sts.get_caller_identity()["Arn"]).rsplit("/", 1)[-1]
            # The session name is the person: CloudTrail shows who broke the glass.
            name = "".join(c if c.isalnum() or c in "+=,.@-_" else "-" for c in who)[:64] or "break-glass"
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=name, DurationSeconds=3600,
                                    **mfa)["Credentials"]
        except botocore.exceptions.ClientError as exc:
            raise _break_glass_refused(cfg, role_arn, exc.response.get("Error", {}).get("Code", "")) from None
        except botocore.exceptions.NoCredentialsError:
            raise CredentialsError("no AWS credentials found", next_step="aws sso login (or export AWS_PROFILE=...)"
                                   ) from None
        _assumed[cache_key] = {"aws_access_key_id": creds["AccessKeyId"],
                               "aws_secret_access_key": creds["SecretAccessKey"],
                               "aws_session_token": creds["SessionToken"]}
    creds = _assumed[cache_key]
    return _with_credentials(cfg, creds)


_LOADER_LOCK = threading.Lock()


class _PlainJsonFiles(botocore.loaders.JSONFileLoader):
    """botocore's model files parsed into plain dicts. botocore parses them with an OrderedDict hook, which
    doubles the parse (EC2's model: ~38 -> ~17 ms); dicts keep their order as well, and nothing in botocore asks
    for an OrderedDict's own methods. Every task parses the models of the services it calls once."""

    OPENERS: tuple[tuple[str, Callable[[str], Any]], ...] = (
        (".json", lambda path: open(path, "rb")),
        (".json.gz", lambda path: gzip.open(path, "rb")),
    )

    def load_file(self, file_path: str) -> Any:
        for ext, opener in self.OPENERS:
            if os.path.isfile(file_path + ext):
                with opener(file_path + ext) as fp:
                    return json.loads(fp.read().decode("utf-8"))
        return None


class _ServiceNames(Sequence[str]):
    """The services a loader knows, as botocore's sorted list, except that `name in` it looks at that one
    service's folders. botocore checks every model it loads with `in` against the whole list, and building
    the list lists and stats the ~420 service folders it ships (~15 ms a model type, once per task)."""

    def __init__(self, loader: _Loader, type_name: str) -> None:
        self._loader = loader
        self._type_name = type_name

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name or os.sep in name or name.startswith("."):
            return False
        # What botocore's list requires of a service: a folder in a search path with an API version folder
        # that holds this type's file.
        for base in self._loader.search_paths:
            folder = os.path.join(base, name)
            try:
                versions = os.listdir(folder)
            except OSError:
                continue
            if any(self._loader.file_loader.exists(os.path.join(folder, v, self._type_name)) for v in versions):
                return True
        return False

    @functools.cached_property
    def _names(self) -> list[str]:
        names: list[str] = self._loader.all_services(self._type_name)
        return names

    def __getitem__(self, index: Any) -> Any:
        return self._names[index]

    def __len__(self) -> int:
        return len(self._names)


class _Loader(botocore.loaders.Loader):
    def list_available_services(self, type_name: str) -> Any:
        return _ServiceNames(self, type_name)

    def all_services(self, type_name: str) -> list[str]:
        names: list[str] = super().list_available_services(type_name)
        return names


def _new_loader() -> botocore.loaders.Loader:
    return _Loader(file_loader=_PlainJsonFiles())


_shared_loader = functools.cache(_new_loader)


def _core_session() -> botocore.session.Session:
    """A fresh botocore session on the process's shared data loader."""
    core = botocore.session.Session()
    core.register_component("data_loader", _shared_loader())
    return core


# A botocore session for reading service models only (no credentials, no calls).
models = functools.cache(_core_session)


class Session:
    """What ops needs of an AWS session, on botocore alone: clients, credentials, the profile's settings.

    boto3's Session would add nothing used here (no resources, no S3 transfers), and importing boto3 (with
    s3transfer) cost every task ~35 ms of CPU before its first call."""

    def __init__(self, core: botocore.session.Session, *, region_name: str | None) -> None:
        self._core = core
        self.region_name = region_name

    def client(self, service: str, *, region_name: str | None = None, endpoint_url: str | None = None,
               config: Config | None = None) -> Any:
        return self._core.create_client(service, region_name=region_name or self.region_name,
                                        endpoint_url=endpoint_url, config=config)

    def get_credentials(self) -> Any:
        return self._core.get_credentials()

    def scoped_config(self) -> dict[str, Any]:
        """The settings of the session's profile (~/.aws/config), e.g. its mfa_serial."""
        return dict(self._core.get_scoped_config())


def new_session(*, region_name: str | None = None, aws_access_key_id: str | None = None,
                aws_secret_access_key: str | None = None, aws_session_token: str | None = None) -> Session:
    """A Session whose botocore data loader is shared by the whole process. Each fresh session otherwise
    reads and parses the service models and endpoint rules again (~0.1 s a client), which every session
    of a pool, every reconnect and every task paid on its way to ready. Credentials given here are the
    session's; without them botocore's usual chain (environment, profile, SSO, ...) finds them."""
    with _LOADER_LOCK:
        core = _core_session()
        if aws_access_key_id is not None and aws_secret_access_key is not None:
            core.set_credentials(aws_access_key_id, aws_secret_access_key, aws_session_token)
        if region_name is not None:
            core.set_config_variable("region", region_name)
        # Reading the profile now: an unknown AWS_PROFILE fails here (ProfileNotFound, which `session`
        # words), not later inside some client call.
        core.get_scoped_config()
    return Session(core, region_name=region_name)


def _with_credentials(cfg: EnvConfig, creds: dict[str, str]) -> Session:
    return new_session(region_name=cfg.region, aws_access_key_id=creds["aws_access_key_id"],
                       aws_secret_access_key=creds["aws_secret_access_key"],
                       aws_session_token=creds.get("aws_session_token"))


def forget_assumed_roles() -> None:
    """Drop cached role credentials (the sandbox was rebuilt, or a test changed a role's policy)."""
    _assumed.clear()


class SandboxNotRunningError(OpsError):
    pass


def sandbox_endpoints() -> dict[str, str]:
    """Service name -> URL, written by `sandbox up`. Key "default" serves every other service."""
    path = state_dir() / ENDPOINTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SandboxNotRunningError("the sandbox is not running", next_step="invoke sandbox up") from None
    if not isinstance(data, dict) or "default" not in data:
        raise SandboxNotRunningError(f"{path} is damaged", next_step="invoke sandbox down && invoke sandbox up")
    return {str(k): str(v) for k, v in data.items()}


def session(cfg: EnvConfig) -> Session:
    if cfg.sandbox:
        return _with_credentials(cfg, sandbox_credentials(cfg))
    try:
        if _acting.get() == BREAK_GLASS:
            return _break_glass_session(cfg)
        return new_session(region_name=cfg.region)
    except botocore.exceptions.ProfileNotFound as exc:
        raise CredentialsError(f"AWS profile {exc.kwargs.get('profile', '')!r} does not exist",
                               next_step="aws configure list-profiles, then export AWS_PROFILE=<one of them>") from None


def endpoint_for(cfg: EnvConfig, service: str) -> str | None:
    if not cfg.sandbox:
        return None
    endpoints = sandbox_endpoints()
    return endpoints.get(service, endpoints["default"])


# An AWS API that does not answer fails in seconds (2 attempts x (3 s connect, 10 s read)), not minutes.
API_CONNECT_TIMEOUT = 3
API_READ_TIMEOUT = 10
API_ATTEMPTS = 2


def api_config(*, connect_timeout: float | None = None, read_timeout: float | None = None, **extra: Any) -> Config:
    """botocore settings for our calls: API_ATTEMPTS attempts in all (its `max_attempts` key would count
    retries, one attempt more) and bounded waits (API_CONNECT_TIMEOUT, API_READ_TIMEOUT unless given)."""
    return Config(retries={"total_max_attempts": API_ATTEMPTS, "mode": "standard"},
                  connect_timeout=API_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
                  read_timeout=API_READ_TIMEOUT if read_timeout is None else read_timeout, **extra)


def client(cfg: EnvConfig, service: str, **config: Any) -> Any:
    return session(cfg).client(service, endpoint_url=endpoint_for(cfg, service), config=api_config(**config))


def caller_identity(cfg: EnvConfig) -> dict[str, str]:
    try:
        ident = client(cfg, "sts").get_caller_identity()
    except botocore.exceptions.NoCredentialsError:
        raise CredentialsError("no AWS credentials found",
                               next_step="aws sso login (or export AWS_PROFILE=...)") from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise CredentialsError(f"AWS rejected the credentials ({code})",
                               next_step="aws sso login (or refresh your credentials)") from None
    except (botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOTokenLoadError):
        raise CredentialsError("the SSO session has expired", next_step="aws sso login") from None
    except botocore.exceptions.ConnectionError as exc:  # no route, refused, or no answer to connect
        raise CredentialsError(f"cannot reach the AWS API ({exc.kwargs.get('endpoint_url', '')})",
                               next_step="check your network, or `invoke sandbox up` for the sandbox") from None
    except botocore.exceptions.ReadTimeoutError as exc:
        raise CredentialsError(f"the AWS API did not answer within {API_READ_TIMEOUT} s "
                               f"({exc.kwargs.get('endpoint_url', '')})",
                               next_step="check your network or proxy, then retry") from None
    return {"Account": ident["Account"], "Arn": ident["Arn"], "UserId": ident["UserId"]}


def check_account(cfg: EnvConfig) -> dict[str, str]:
    """Refuse to touch an environment from the wrong AWS account. Returns the caller identity."""
    ident = caller_identity(cfg)
    if ident["Account"] != cfg.account_id:
        raise AccountMismatchError(
            f"your credentials are for AWS account {ident['Account']} but {cfg.source.name} "
            f"is for account {cfg.account_id}; nothing was changed",
            next_step=f"switch credentials to account {cfg.account_id} (e.g. export AWS_PROFILE=...)",
        )
    return ident
