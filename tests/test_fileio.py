"""ops.fileio.atomic_write: all or nothing, and never more readable than asked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ops import fileio


def test_replaces_the_whole_file_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pgpass"
    fileio.atomic_write(path, "old\n", mode=0o644)
    fileio.atomic_write(path, b"new\n", mode=0o600, durable=True)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["pgpass"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data-sources.json"
    path.write_text("{}")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(path, "{\"x\": 1}")
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["data-sources.json"]
