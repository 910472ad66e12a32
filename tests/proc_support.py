"""Linux /proc as tests read it: each process's state, parent and process group (from /proc/<pid>/stat)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str  # "R", "S", ..., "Z" for a zombie
    ppid: int
    pgid: int
    cpu_seconds: float  # user + system time


def proc_stat(pid: int) -> ProcStat | None:
    """None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]),
                    cpu_seconds=(int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))


def processes() -> Iterator[ProcStat]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := proc_stat(int(entry.name))) is not None:
            yield found


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is `pid` or one of its parents (False once a link of the chain is gone)."""
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        found = proc_stat(pid)
        if found is None:
            return False
        pid, seen = found.ppid, seen + 1
    return pid == ancestor
