"""The sandbox's AWS provider, started once: terraform reattaches to it instead of starting one per command.

Every terraform command that loads the AWS provider starts a provider process (a ~700 MB Go binary that
builds its whole schema) after hashing that binary against the lock file: ~1 s of CPU before any work,
~50 commands in a test run. `terraform-provider-aws -debug` serves until stopped and prints the
TF_REATTACH_PROVIDERS value that makes terraform use it (the provider's main.go: tf5server.WithManagedDebug);
terraform then starts no provider and checks no checksum for it (internal/command/meta_providers.go,
unmanagedProviderFactory), and everything else, the plan, apply, state and lock file, is as before.

The server gets the environment a sandbox run's terraform would give its own provider
(ops.terraform.sandbox_provider_env): the emulator's endpoint and the deployer's keys. Its fingerprint
and its reattach value go to PROVIDER_SERVER_FILE; ops.terraform.provider_server uses it only for runs whose
environment has the same fingerprint, so a run with other keys, endpoints or proxies (or TF_LOG) starts its
own provider as usual. Runs outside the sandbox never see it. BASTIONLESS_SANDBOX_PROVIDER_SERVER=0: no server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops import facts, terraform
from ops.config import PROJECT_ROOT, EnvConfig
from ops.sandbox import procs
from ops.sandbox.procs import ProcRecord, StartError

LOG_FILE = "aws_provider.log"
START_TIMEOUT = 60.0
_REATTACH_RE = re.compile(r"^\s*TF_REATTACH_PROVIDERS='(\{.*\})'\s*$", re.MULTILINE)


def wanted() -> bool:
    return os.environ.get(facts.PROVIDER_SERVER_ENV, "1") != "0"


def fingerprint(cfg: EnvConfig, binary: Path) -> dict[str, str]:
    """What a running server must match to be kept: its binary and what the provider reads from its env."""
    return {"binary": str(binary), "env": terraform.provider_fingerprint(terraform.sandbox_provider_env(cfg))}


def current(state_dir: Path) -> dict[str, Any] | None:
    return procs.read_json(state_dir / facts.PROVIDER_SERVER_FILE)


def start(cfg: EnvConfig, *, binary: Path, state_dir: Path,
          version: str = terraform.DEFAULT_AWS_PROVIDER_VERSION) -> ProcRecord:
    """Start the server, wait for its reattach value, record it in PROVIDER_SERVER_FILE."""
    env = terraform.sandbox_provider_env(cfg)
    log = state_dir / LOG_FILE
    offset = log.stat().st_size if log.exists() else 0
    proc = procs.start_detached([str(binary), "-debug"], log=log, env=env, cwd=PROJECT_ROOT)
    found: dict[str, Any] = {}

    def ready() -> bool:
        with contextlib.suppress(FileNotFoundError), log.open("rb") as fh:
            fh.seek(offset)
            match = _REATTACH_RE.search(fh.read().decode(errors="replace"))
            if match:
                found.update(json.loads(match.group(1)))
        return bool(found)

    if not procs.wait_until(ready, timeout=START_TIMEOUT, alive=lambda: proc.poll() is None):
        with contextlib.suppress(StartError):
            procs.stop(procs.record_for(proc, port=0, log=log))
        raise StartError(f"the AWS provider server did not start: {procs.log_tail(log) or 'no output'}",
                         next_step=f"see {log}, or run without it: export {facts.PROVIDER_SERVER_ENV}=0")
    record = procs.record_for(proc, port=0, log=log)
    procs.write_json(state_dir / facts.PROVIDER_SERVER_FILE,
                     {"reattach": found, "version": version, "fingerprint": terraform.provider_fingerprint(env),
                      "binary": str(binary)}, mode=0o600)
    return record


def healthy(state_dir: Path) -> bool:
    """It answers on the socket terraform would reattach to."""
    return terraform.server_answers(current(state_dir) or {})


def matches(state_dir: Path, wanted_print: Mapping[str, str]) -> bool:
    data = current(state_dir) or {}
    return data.get("binary") == wanted_print["binary"] and data.get("fingerprint") == wanted_print["env"]


def forget(state_dir: Path) -> None:
    (state_dir / facts.PROVIDER_SERVER_FILE).unlink(missing_ok=True)
