"""Answer a task's confirmation the way a person does: typed on a terminal (a pseudo-terminal here).

ops.confirm refuses a piped answer, so tests that confirm interactively give the child a pty as stdin.
"""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def run_on_terminal(argv: Sequence[str], *, answer: str, cwd: Path, env: Mapping[str, str],
                    timeout: float, on_stderr: Callable[[str], None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` with a terminal as stdin and `answer` typed into it; stdout and stderr are captured.
    `on_stderr` sees each stderr line as it comes (a test that acts on a progress line, not on a timer)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    finally:
        os.close(slave)

    def drain() -> None:
        # The terminal echoes what is typed; read it so the echo never fills the pty's buffer.
        with contextlib.suppress(OSError):
            while os.read(master, 4096):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        os.write(master, answer.encode())
        if on_stderr is None:
            out, err = proc.communicate(timeout=timeout)
        else:
            out, err = _streamed(proc, on_stderr, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        reader.join(timeout=5)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _streamed(proc: subprocess.Popen[str], on_stderr: Callable[[str], None], timeout: float) -> tuple[str, str]:
    assert proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)]  # type: ignore[arg-type]

    def read_err() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            err.append(line)
            on_stderr(line)

    readers.append(threading.Thread(target=read_err, daemon=True))
    for reader in readers:
        reader.start()
    proc.wait(timeout=timeout)
    for reader in readers:
        reader.join(timeout=10)
    return "".join(out), "".join(err)

