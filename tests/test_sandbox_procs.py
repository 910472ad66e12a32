"""ops.sandbox.procs: ports, detached processes, and never signalling a process that is not ours."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ops.sandbox import procs
from ops.sandbox.procs import PortBusyError, ProcRecord


@pytest.mark.usefixtures("real_io")
def test_busy_port_is_one_line_naming_the_fix() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not procs.port_free(port)
        with pytest.raises(PortBusyError) as exc:
            procs.pick_port(port, what="moto", flag="--moto-port")
    msg = exc.value.message
    assert f"moto port {port} on 127.0.0.1 is already in use" in msg and "\n" not in msg
    assert exc.value.next_step == "free that port, or pass --moto-port 0 to pick a free one"


@pytest.mark.usefixtures("real_io")
def test_port_zero_picks_a_free_port_and_a_free_port_is_kept() -> None:
    port = procs.pick_port(0, what="x", flag="--x")
    assert procs.port_free(port)
    assert procs.pick_port(port, what="x", flag="--x") == port
    with pytest.raises(PortBusyError, match="is not a TCP port"):
        procs.pick_port(70000, what="x", flag="--x")


@pytest.mark.usefixtures("real_io")
def test_detached_process_is_recorded_checked_and_stopped(tmp_path: Path) -> None:
    proc = procs.start_detached([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                                log=tmp_path / "p.log")
    try:
        record = procs.record_for(proc, port=0, log=tmp_path / "p.log")
        assert procs.is_alive(record)
        # Its own session: a Ctrl-C in the terminal that ran `sandbox up` does not reach it.
        assert subprocess.check_output(["ps", "-o", "sid=", "-p", str(proc.pid)]).strip() == str(proc.pid).encode()
        procs.stop(record, timeout=5)
        assert not procs.is_alive(record)
        assert proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.usefixtures("real_io")
def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real = procs.record_for(proc, port=0, log=tmp_path / "x")
        # Same pid, another start time: what a recycled pid looks like. Never signal it.
        stranger = ProcRecord(pid=real.pid, create_time=real.create_time - 3600, port=0, log="")
        assert not procs.is_alive(stranger)
        procs.stop(stranger, timeout=1)
        assert proc.poll() is None, "stop() signalled a process that was not the recorded one"
    finally:
        proc.kill()
        proc.wait()


def test_records_round_trip_and_json_is_written_atomically(tmp_path: Path) -> None:
    record = ProcRecord(pid=12, create_time=3.5, port=80, log="/x", url="http://127.0.0.1:80")
    assert ProcRecord.from_json(record.to_json()) == record
    path = tmp_path / "a" / "s.json"
    procs.write_json(path, {"k": 1}, mode=0o600)
    assert procs.read_json(path) == {"k": 1}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]
    path.write_text("{not json")
    assert procs.read_json(path) is None
