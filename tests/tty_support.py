"""Answer a task's confirmation the way a person does: typed on a terminal (a pseudo-terminal here).

ops.confirm refuses a piped answer, so tests that confirm interactively give the child a pty as stdin.
"""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_on_terminal(argv: Sequence[str], *, answer: str, cwd: Path, env: Mapping[str, str],
                    timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `argv` with a terminal as stdin and `answer` typed into it; stdout and stderr are captured."""
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
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        reader.join(timeout=5)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
