"""Background processes and ports for the sandbox: start detached, remember, check, stop.

A sandbox component outlives the `invoke sandbox up` that started it, so it runs in its own session
(a Ctrl-C in the terminal that started it does not reach it) with its output in a log file. What we
remember about it is a `ProcRecord`: pid plus the process start time, because a pid alone may have
been reused by an unrelated process by the time `sandbox down` runs, and we must never signal that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ops.errors import OpsError
from ops.fileio import atomic_write
from ops.fileio import read_json as read_json  # the sandbox modules' name for it

LOOPBACK = "127.0.0.1"


class PortBusyError(OpsError):
    """A port the user asked for is taken by another process."""


class StartError(OpsError):
    """A sandbox component did not come up."""


@dataclass(frozen=True)
class ProcRecord:
    """A process we started: enough to find it again, and only it."""

    pid: int
    create_time: float
    port: int
    log: str
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcRecord:
        return cls(pid=int(data["pid"]), create_time=float(data["create_time"]), port=int(data["port"]),
                   log=str(data.get("log", "")), url=str(data.get("url", "")))


def _proc_stat(pid: int) -> tuple[float, str] | None:
    """(start time in seconds since the epoch, state letter) of a process, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _ps_stat(pid)
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    ticks = int(fields[19])
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK"), fields[0]


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _ps_stat(pid: int) -> tuple[float, str] | None:
    """Where there is no /proc (macOS): ps reports elapsed seconds and the state."""
    proc = subprocess.run(["ps", "-o", "etime=,stat=", "-p", str(pid)], capture_output=True, text=True, check=False)
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) < 2:
        return None
    days, _, clock = parts[0].rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    seconds += int(days or 0) * 86400
    # etime has one-second resolution: round so two reads of one process agree.
    return float(round(time.time() - seconds)), parts[1][0]


def process_start_time(pid: int) -> float | None:
    found = _proc_stat(pid) if pid > 0 else None
    return found[0] if found else None


def is_alive(record: ProcRecord) -> bool:
    """True if the recorded process still runs (same pid AND same start time, not a zombie)."""
    found = _proc_stat(record.pid) if record.pid > 0 else None
    if found is None or found[1] == "Z":
        return False
    # A reused pid started later by far more than the clock-tick rounding of one process's start time.
    return abs(found[0] - record.create_time) < 2.0


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """True if nothing listens on host:port (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option servers use, so a port in TIME_WAIT after our own `down` counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(requested: int, *, what: str, flag: str) -> int:
    """The requested port if it is free, a free one for 0; PortBusyError naming the fix otherwise."""
    if requested == 0:
        return free_port()
    if not 1 <= requested <= 65535:
        raise PortBusyError(f"{what} port {requested} is not a TCP port", next_step=f"pass {flag} 1..65535, or 0")
    if not port_free(requested):
        raise PortBusyError(
            f"{what} port {requested} on {LOOPBACK} is already in use by another process",
            next_step=f"free that port, or pass {flag} 0 to pick a free one")
    return requested


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_detached(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                   cwd: Path | None = None, user: str | None = None) -> subprocess.Popen[bytes]:
    """Start a process in its own session with stdout+stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                                user=user)


def record_for(proc: subprocess.Popen[bytes] | int, *, port: int, log: Path, url: str = "") -> ProcRecord:
    pid = proc if isinstance(proc, int) else proc.pid
    started = process_start_time(pid)
    if started is None:
        raise StartError(f"process {pid} exited right after start; see {log}")
    return ProcRecord(pid=pid, create_time=started, port=port, log=str(log), url=url)


def wait_until(check: Callable[[], bool], *, timeout: float, alive: Callable[[], bool] | None = None,
               interval: float = 0.05) -> bool:
    """Poll `check` until true (True), the deadline passes or `alive` says the process died (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if (alive is not None and not alive()) or time.monotonic() > deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if an HTTP GET of `url` answers (any status below 500)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we built
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def stop(record: ProcRecord, *, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group, wait, then SIGKILL what is left. Only ever the recorded process."""
    if not is_alive(record):
        return
    try:
        # The component is a session leader (start_detached): its group holds its children too.
        pgid = os.getpgid(record.pid)
        target_group = pgid == record.pid
    except ProcessLookupError:
        return
    _signal(record.pid, sig, group=target_group)
    if wait_until(lambda: not is_alive(record), timeout=timeout):
        return
    _signal(record.pid, signal.SIGKILL, group=target_group)
    wait_until(lambda: not is_alive(record), timeout=5)


def _signal(pid: int, sig: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    # Reap it if it is our own child (tests start and stop in one process), so it is not a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def write_json(path: Path, data: Mapping[str, Any], *, mode: int = 0o644) -> None:
    """Write atomically, so a reader never sees half a file."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=mode)


def log_tail(path: Path | str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])
