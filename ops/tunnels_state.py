"""Running tunnels on this machine: one state file per environment under `<state dir>/tunnels/<env>.json`.

The process that runs a tunnel (foreground or `--background`) claims the file before it starts a
session and removes it when it stops, so `invoke tunnels` and `invoke tunnel-close` work for both.
A file whose process is gone is stale and silently removed. No secrets are stored here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ops import aws
from ops.errors import OpsError
from ops.fileio import atomic_write
from ops.sandbox.procs import process_start_time

CLOSE_TIMEOUT = 15.0


class TunnelExistsError(OpsError):
    """This machine already runs a tunnel to the environment."""


@dataclass(frozen=True)
class TunnelRecord:
    env: str
    pid: int
    status: str = "starting"  # starting, ready, reconnecting
    local_host: str = "127.0.0.1"
    local_port: int = 0
    session_id: str = ""
    transport: str = ""
    started: float = field(default_factory=time.time)
    reconnects: int = 0
    instance_id: str = ""
    db_host: str = ""
    db_port: int = 0
    db_name: str = ""
    db_user: str = ""
    background: bool = False
    log: str = ""
    # Sessions this process opened, so a force-close can still terminate them in AWS.
    sessions: tuple[str, ...] = ()
    region: str = ""
    env_file: str = ""
    # The process's own start time: a recycled pid is never mistaken for our tunnel (nor signalled).
    pid_started: float = 0.0
    # Per session carrying the tunnel: (session id, bytes, current MB/s, open connections).
    lanes: tuple[tuple[str, int, float, int], ...] = ()

    def uptime(self, now: float | None = None) -> float:
        return max(0.0, (now or time.time()) - self.started)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TunnelRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["sessions"] = tuple(values.get("sessions") or ())
        values["lanes"] = tuple((str(sid), int(size), float(rate), int(conns))
                                for sid, size, rate, conns in values.get("lanes") or ())
        return cls(**values)


def tunnels_dir() -> Path:
    return aws.state_dir() / "tunnels"


def state_path(env: str) -> Path:
    return tunnels_dir() / f"{env}.json"


def log_path(env: str) -> Path:
    return tunnels_dir() / f"{env}.log"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    # Our own background children linger as zombies until reaped: reap them, they are gone.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        # A recycled pid belongs to something else: only a tunnel process counts. An exiting process
        # has an empty command line for a moment: still alive until it is gone.
        data = cmdline.read_bytes()
        return not data or b"tunnel" in data
    return True


def _write(path: Path, record: TunnelRecord, *, exclusive: bool = False) -> None:
    data = json.dumps(asdict(record), indent=1).encode()
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return
    atomic_write(path, data, mode=0o600)


def _read_file(path: Path) -> TunnelRecord | None:
    try:
        return TunnelRecord.from_json(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def is_ours(record: TunnelRecord) -> bool:
    """The recorded process still runs and is the one that wrote the record (pid AND start time)."""
    if not pid_alive(record.pid):
        return False
    if not record.pid_started:
        return True  # a record from before start times were kept: the command-line check only
    started = process_start_time(record.pid)
    return started is not None and abs(started - record.pid_started) < 2.0


def read(env: str) -> TunnelRecord | None:
    """The live tunnel of `env`, or None. A stale file is removed, unless its process died holding sessions
    (SIGKILL, a crash): that orphan stays for `invoke tunnels` to report and `tunnel-close` to end."""
    path = state_path(env)
    record = _read_file(path)
    if record is None:
        return None
    if not is_ours(record):
        if not record.sessions:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None
    return record


def orphan(env: str) -> TunnelRecord | None:
    """A dead tunnel's record that still names sessions it opened (they may still be open in AWS)."""
    record = _read_file(state_path(env))
    if record is None or not record.sessions or is_ours(record):
        return None
    return record


def list_orphans() -> list[TunnelRecord]:
    if not tunnels_dir().is_dir():
        return []
    found = [orphan(p.stem) for p in sorted(tunnels_dir().glob("*.json"))]
    return [r for r in found if r is not None]


def claim(record: TunnelRecord) -> TunnelRecord:
    """Take the environment's slot before starting a session; refuse when a live tunnel holds it."""
    tunnels_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    if not record.pid_started:
        record = replace(record, pid_started=process_start_time(record.pid) or 0.0)
    path = state_path(record.env)
    left = orphan(record.env)
    if left is not None:
        # A killed tunnel's sessions: end them before the slot is reused, and say so if that fails.
        _raise_failures(left, _terminate_sessions(left))
        release(left)
    for _ in range(3):
        try:
            _write(path, record, exclusive=True)
            return record
        except FileExistsError:
            existing = read(record.env)
            if existing is not None and existing.pid != record.pid:
                where = f"port {existing.local_port}" if existing.local_port else "starting"
                raise TunnelExistsError(
                    f"a tunnel to {record.env} is already running on this machine ({where}, pid {existing.pid})",
                    next_step=f"use it, or invoke tunnel-close --env {record.env}") from None
            if existing is not None:
                break
    _write(path, record)
    return record


def update(record: TunnelRecord, **changes: Any) -> TunnelRecord:
    new = replace(record, **changes)
    path = state_path(record.env)
    current = _read_file(path)
    if current is not None and current.pid != record.pid:
        return new  # someone force-closed us and another tunnel took the slot: leave theirs alone
    _write(path, new)
    return new


def release(record: TunnelRecord) -> None:
    path = state_path(record.env)
    current = _read_file(path)
    if current is None or current.pid == record.pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def list_tunnels() -> list[TunnelRecord]:
    if not tunnels_dir().is_dir():
        return []
    found = [read(p.stem) for p in sorted(tunnels_dir().glob("*.json"))]
    return [r for r in found if r is not None]


def close(env: str, *, timeout: float = CLOSE_TIMEOUT) -> TunnelRecord:
    """Stop the tunnel of `env` like Ctrl-C does (SIGTERM: it terminates its session and exits); for an
    orphan (its process was killed), end its sessions through the API."""
    record = read(env)
    if record is None:
        left = orphan(env)
        if left is None:
            raise OpsError(f"no tunnel to {env} is running on this machine", next_step="invoke tunnels")
        failures = _terminate_sessions(left)
        release(left)
        _raise_failures(left, failures)
        return left
    _stop([record], timeout=timeout)
    return record


def close_all(*, timeout: float = CLOSE_TIMEOUT) -> list[TunnelRecord]:
    records = list_tunnels()
    _stop(records, timeout=timeout)
    for left in list_orphans():
        failures = _terminate_sessions(left)
        release(left)
        _raise_failures(left, failures)
        records.append(left)
    return records


def _stop(records: list[TunnelRecord], *, timeout: float) -> None:
    # Only processes that are still ours are signalled: a recycled pid belongs to someone else.
    records = [r for r in records if is_ours(r)]
    # Signal all first so several tunnels shut down in parallel.
    for record in records:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_ours(r) for r in records):
        time.sleep(0.05)
    failed: list[tuple[TunnelRecord, list[str]]] = []
    for record in records:
        if is_ours(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            failed.append((record, _terminate_sessions(record)))
        release(record)
    for record, failures in failed:
        _raise_failures(record, failures)


def _terminate_sessions(record: TunnelRecord) -> list[str]:
    """End the record's sessions through the API so none stays open; returns what could not be ended."""
    if not record.sessions:
        return []
    if not record.env_file:
        return [f"{sid}: the record names no env file to reach AWS with" for sid in record.sessions]
    from ops.config import parse_env

    try:
        path = Path(record.env_file)
        cfg = parse_env(record.env, path.read_bytes(), path)
        ssm = aws.client(cfg, "ssm")
    except (OSError, OpsError) as exc:
        return [f"{sid}: {exc}" for sid in record.sessions]
    failures: list[str] = []
    for sid in record.sessions:
        try:
            ssm.terminate_session(SessionId=sid)
        except Exception as exc:  # every failure is reported to the caller, never swallowed
            failures.append(f"{sid}: {exc}")
    return failures


def _raise_failures(record: TunnelRecord, failures: list[str]) -> None:
    if failures:
        raise OpsError(f"the tunnel to {record.env} left session(s) that could not be terminated ("
                       f"{'; '.join(failures)})",
                       next_step=f"invoke sessions --env {record.env}, then "
                                 f"invoke sessions-terminate --env {record.env} --session ID")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_table(records: list[TunnelRecord], *, now: float | None = None) -> str:
    if not records:
        return "no tunnels running (start one: invoke tunnel --env NAME --background)"
    header = ("ENV", "LOCAL", "SESSION", "TRANSPORT", "UPTIME", "RECONNECTS", "STATUS", "PID")
    rows = [header] + [(r.env, f"{r.local_host}:{r.local_port}",
                        (f"pool of {len(r.lanes)}" if len(r.lanes) > 1 else r.session_id) or "-", r.transport or "-",
                        format_duration(r.uptime(now)), str(r.reconnects), r.status,
                        str(r.pid) + ("" if r.background else " (fg)")) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    out = lines[:1]
    for record, line in zip(records, lines[1:], strict=True):
        out.append(line)
        out += [f"  session {sid}: {size / 1e6:.1f} MB, {rate:.2f} MB/s now, {conns} connection(s)"
                for sid, size, rate, conns in record.lanes]
    return "\n".join(out)
