"""Whole-file writes that a reader (DBeaver, libpq, a second invoke) never sees half done, and the reader."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = False) -> None:
    """Replace `path` with `data` in one rename.

    The temporary file is created 0600 and gets `mode` only before the rename, so a secret written
    0600 is never readable by others, not even briefly. Its name starts with "." and ends in ".tmp"
    so that no program globbing for the real name (DBeaver's data-sources*.json) picks it up.
    `durable`: fsync the file and its folder, for user files a crash must not lose.
    """
    if path.is_symlink():
        # A dotfile manager's link (pg_service.conf, .pgpass, data-sources.json): update its target, keep the link.
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content; None when it is missing, half-written by a crash or not an object."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None
