"""ops.migrate's interpreter probe: what the project's Python says (its version, its alembic), asked once
and reused from the state dir while nothing it depends on changes; failures are never remembered."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ops import migrate
from ops.errors import ToolMissingError


@pytest.fixture
def asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The interpreters asked for `info` (a child each), with the state dir in tmp_path."""
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path / "state"))
    calls: list[str] = []
    real: Callable[..., Any] = subprocess.run

    def run(argv: list[str], *args: Any, **kw: Any) -> Any:
        if argv[-1:] == ["info"]:
            calls.append(argv[0])
        return real(argv, *args, **kw)

    monkeypatch.setattr(migrate.subprocess, "run", run)
    return calls


def _venv(where: Path) -> tuple[str, Path]:
    """A fresh venv without alembic (nor pip): its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    return str(where / "bin" / "python"), where / rel


@pytest.mark.usefixtures("real_io")
def test_the_answer_is_reused_until_a_package_is_installed(asked: list[str], tmp_path: Path) -> None:
    python, site = _venv(tmp_path / "venv")
    with pytest.raises(ToolMissingError, match=r"alembic is not installed for .*venv/bin/python \(src\)"):
        migrate._probe(python, "src")
    with pytest.raises(ToolMissingError):
        migrate._probe(python, "src")
    assert asked == [python, python], "a failure is not remembered: the fix is seen at once"

    # "Install" alembic: a .pth to this run's own packages (changes the venv's site-packages directory).
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    found = migrate._probe(python, "src")
    assert found.alembic and found.python == sys.version.split()[0]
    assert migrate._probe(python, "src") == found
    assert migrate._probe(python, "src") == found
    assert asked == [python] * 3, "asked once after the install, then reused"

    # Removing a package changes the directory again: asked again, and the answer is the truth.
    (site / "deps.pth").unlink()
    with pytest.raises(ToolMissingError, match="alembic is not installed"):
        migrate._probe(python, "src")
    assert len(asked) == 4


@pytest.mark.usefixtures("real_io")
def test_a_variable_that_steers_imports_is_part_of_the_key(asked: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    migrate._probe(sys.executable, "own")
    migrate._probe(sys.executable, "own")
    assert len(asked) == 1
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    migrate._probe(sys.executable, "own")
    assert len(asked) == 2


@pytest.mark.usefixtures("real_io")
def test_what_is_not_a_python_is_named_and_a_broken_cache_is_ignored(asked: list[str], tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError, match=r"/bin/true \(x\) does not run Python 3 scripts"):
        migrate._probe("/bin/true", "x")
    with pytest.raises(ToolMissingError, match=r"cannot run the migration interpreter .*/nope \(y\)"):
        migrate._probe(str(tmp_path / "nope"), "y")
    cache = tmp_path / "state" / migrate.PROBE_CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("{not json")
    assert migrate._probe(sys.executable, "own").alembic
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    assert migrate._probe(sys.executable, "own").alembic
    assert asked.count(sys.executable) == 1
