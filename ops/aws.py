"""AWS clients for an environment: the real AWS, or the sandbox's local endpoints.

All of `ops` gets its clients here, so the sandbox runs exactly the code path prod runs; only
the endpoint URLs and the (fake) credentials differ, and only for an env with `sandbox = true`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from ops.config import PROJECT_ROOT, EnvConfig
from ops.errors import AccountMismatchError, CredentialsError, OpsError
from ops.facts import STATE_DIR_ENV


def state_dir() -> Path:
    """Where the sandbox keeps its pids, ports and data (and tunnels their state); tests point it elsewhere."""
    return Path(os.environ.get(STATE_DIR_ENV, PROJECT_ROOT / ".sandbox"))


ENDPOINTS_FILE = "endpoints.json"
SANDBOX_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


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


def session(cfg: EnvConfig) -> boto3.Session:
    if cfg.sandbox:
        return boto3.Session(
            region_name=cfg.region,
            aws_access_key_id=SANDBOX_CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=SANDBOX_CREDENTIALS["aws_secret_access_key"],
        )
    return boto3.Session(region_name=cfg.region)


def endpoint_for(cfg: EnvConfig, service: str) -> str | None:
    if not cfg.sandbox:
        return None
    endpoints = sandbox_endpoints()
    return endpoints.get(service, endpoints["default"])


def client(cfg: EnvConfig, service: str, **config: Any) -> Any:
    return session(cfg).client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_for(cfg, service),
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30, **config),
    )


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
    except botocore.exceptions.EndpointConnectionError as exc:
        raise CredentialsError(f"cannot reach the AWS API ({exc.kwargs.get('endpoint_url', '')})",
                               next_step="check your network, or `invoke sandbox up` for the sandbox") from None
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
