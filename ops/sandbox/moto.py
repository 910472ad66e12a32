"""moto server as the sandbox's AWS API: its own process, loopback only, health-checked."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ops.config import PROJECT_ROOT
from ops.errors import ToolMissingError
from ops.sandbox import procs
from ops.sandbox.procs import ProcRecord, StartError

START_TIMEOUT = 60.0
INSTALL_HINT = "install the sandbox extra: .venv/bin/pip install -e '.[sandbox]' (or run ./dev test once)"


def moto_server_binary() -> str:
    """moto_server next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise ToolMissingError(f"moto_server (the sandbox's AWS API emulator) is not installed; {INSTALL_HINT}")
    return found


def health_url(url: str) -> str:
    return f"{url.rstrip('/')}/moto-api/"


def healthy(url: str) -> bool:
    return procs.http_ok(health_url(url))


def start(*, state: Path, port: int) -> ProcRecord:
    """Start moto_server on 127.0.0.1:port and wait until it answers."""
    moto_server_binary()  # the moto package is installed (same check, same hint)
    log = state / "moto.log"
    env = dict(os.environ)
    # AWS managed policies (the ECS execution role attaches AmazonECSTaskExecutionRolePolicy) exist in moto only
    # with this.
    env["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    # Whatever account the user's shell points at must not leak into the emulator.
    for var in ("MOTO_ACCOUNT_ID", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        env.pop(var, None)
    # moto_server itself, with IAM enforced on every request (ops.sandbox.moto_iam explains how).
    proc = procs.start_detached([sys.executable, "-m", "ops.sandbox.moto_iam", "-H", procs.LOOPBACK, "-p", str(port)],
                                log=log, env=env, cwd=PROJECT_ROOT)
    url = f"http://{procs.LOOPBACK}:{port}"
    record = procs.record_for(proc, port=port, log=log, url=url)
    if not procs.wait_until(lambda: healthy(url), timeout=START_TIMEOUT, alive=lambda: proc.poll() is None):
        procs.stop(record)
        raise StartError(f"moto_server did not start on port {port}: {procs.log_tail(log) or 'no output'}",
                         next_step=f"see {log}")
    return record
