"""Which client carries a session (`--transport auto|plugin|native`) and how the plugin is started.

The plugin is started exactly as the AWS CLI starts it (awscli/customizations/sessionmanager.py):

    session-manager-plugin AWS_SSM_START_SESSION_RESPONSE <region> StartSession <profile or ''>
                           <json of the StartSession parameters, incl. Target> <ssm endpoint url>

with the StartSession answer ({SessionId, TokenValue, StreamUrl}) in the environment variable named by
argv[1]. One deliberate difference: for plugins older than 1.2.497.0 the AWS CLI puts the answer
(with the session token) into argv instead, where every local user can read it in `ps`; we never do,
and an old plugin fails with a message asking for an upgrade.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any, Literal

from ops import aws, facts
from ops.config import EnvConfig
from ops.errors import OpsError, ToolMissingError

Transport = Literal["auto", "native", "plugin"]
TRANSPORTS: tuple[str, ...] = ("auto", "native", "plugin")
PLUGIN = "session-manager-plugin"
# Tests and unusual installs point here instead of PATH.
PLUGIN_ENV = facts.PLUGIN_ENV
RESPONSE_ENV = "AWS_SSM_START_SESSION_RESPONSE"
LAST_VERSION_WITHOUT_ENV = facts.LAST_PLUGIN_WITHOUT_ENV


def plugin_path() -> str | None:
    override = os.environ.get(PLUGIN_ENV, "")
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    return shutil.which(PLUGIN)


def choose(transport: str) -> Literal["native", "plugin"]:
    """The transport that will run. `auto`: the plugin when installed, else the built-in client."""
    if transport not in TRANSPORTS:
        raise OpsError(f"unknown transport {transport!r}", next_step="use --transport auto, native or plugin")
    if transport == "native":
        return "native"
    if plugin_path() is not None:
        return "plugin"
    if transport == "plugin":
        raise ToolMissingError(
            f"{PLUGIN} is not installed (not on PATH)",
            next_step="install it (https://docs.aws.amazon.com/systems-manager/latest/userguide/"
                      "session-manager-working-with-install-plugin.html), or use --transport native")
    return "native"


def plugin_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissingError(f"{path} --version failed ({exc})",
                               next_step="reinstall the Session Manager plugin, or use --transport native") from None
    return re.sub(r"\s+", "", out.stdout)


def _version_tuple(text: str) -> tuple[int, ...] | None:
    return tuple(int(p) for p in text.split(".")) if re.fullmatch(r"\d+(\.\d+){0,3}", text) else None


def supports_env_handoff(version: str) -> bool:
    """The AWS CLI's rule: strictly newer than 1.2.497.0 reads the answer from the environment."""
    parsed, floor = _version_tuple(version), _version_tuple(LAST_VERSION_WITHOUT_ENV)
    if parsed is None or floor is None:
        return False
    width = max(len(parsed), len(floor))
    return parsed + (0,) * (width - len(parsed)) > floor + (0,) * (width - len(floor))


def plugin_invocation(*, plugin: str, response: Mapping[str, Any], region: str, profile: str,
                      parameters: Mapping[str, Any], endpoint_url: str,
                      base_env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(argv, env) for the plugin, as the AWS CLI builds them; the session token travels only in env."""
    answer = {"SessionId": response["SessionId"], "TokenValue": response["TokenValue"],
              "StreamUrl": response["StreamUrl"]}
    env = dict(base_env)
    env[RESPONSE_ENV] = json.dumps(answer)
    argv = [plugin, RESPONSE_ENV, region, "StartSession", profile, json.dumps(dict(parameters)), endpoint_url]
    return argv, env


def old_plugin_error(version: str) -> ToolMissingError:
    return ToolMissingError(
        f"{PLUGIN} {version or '(unknown version)'} is too old: it needs the session token in its command line, "
        f"which other local users can read",
        next_step=f"upgrade the plugin to a version newer than {LAST_VERSION_WITHOUT_ENV}, or use --transport native")


def default_profile(cfg: EnvConfig) -> str:
    """What the AWS CLI passes as the profile: the one in use, or '' (the plugin then uses the default chain)."""
    return "" if cfg.sandbox else os.environ.get("AWS_PROFILE", "")


SANDBOX_CA = "tls/ca.pem"
SANDBOX_PROXY = "tls/aws_api_proxy"


def sandbox_ca_file(cfg: EnvConfig) -> str:
    """The CA the sandbox's wss:// data channel is signed with ('' outside the sandbox: AWS needs none)."""
    if not cfg.sandbox:
        return ""
    path = aws.state_dir() / SANDBOX_CA
    return str(path) if path.is_file() else ""


def plugin_env(cfg: EnvConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The plugin's environment: in a sandbox, its fixed credentials (the plugin calls KMS, ResumeSession
    and TerminateSession itself) and its CA and proxy; elsewhere `base` as it is."""
    env = dict(base)
    if cfg.sandbox:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            env.pop(key, None)
        # The plugin calls KMS itself for encrypted sessions: as the same identity as the tunnel.
        creds = aws.sandbox_credentials(cfg)
        env["AWS_ACCESS_KEY_ID"] = creds["aws_access_key_id"]
        env["AWS_SECRET_ACCESS_KEY"] = creds["aws_secret_access_key"]
        if "aws_session_token" in creds:
            env["AWS_SESSION_TOKEN"] = creds["aws_session_token"]
    env.setdefault("AWS_REGION", cfg.region)
    return trust_env(cfg, env)


def trust_env(cfg: EnvConfig, env: Mapping[str, str]) -> dict[str, str]:
    """`env` for the plugin in a sandbox environment: it trusts the sandbox CA, and the
    plugin's KMS calls, which always go to kms.<region>.amazonaws.com, reach the emulator through the
    sandbox's proxy (HTTPS_PROXY; Go never proxies loopback, so the endpoint itself is dialled directly)."""
    out = dict(env)
    ca = sandbox_ca_file(cfg)
    if ca:
        # Go's TLS reads SSL_CERT_FILE; the plugin's AWS SDK uses AWS_CA_BUNDLE instead when it is set.
        out["SSL_CERT_FILE"] = out["AWS_CA_BUNDLE"] = ca
        proxy = aws.state_dir() / SANDBOX_PROXY
        if proxy.is_file():
            out["HTTPS_PROXY"] = proxy.read_text().strip()
    return out
