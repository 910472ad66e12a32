"""Every fixture in tests/ has a name of its own: a module fixture named like another (`world`, `sandbox`,
`plugin`, ...) silently replaces it in that module, and shared names once caused a cross-module bug."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import parse_python

TESTS = Path(__file__).resolve().parent


def fixture_names(source: str) -> list[tuple[str, int]]:
    """(name, line) of every @pytest.fixture in the source, honouring `name=`."""
    found = []
    for node in ast.walk(parse_python(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            if ast.unparse(call.func if call else decorator) not in ("pytest.fixture", "fixture"):
                continue
            name = node.name
            for keyword in call.keywords if call else []:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    name = str(keyword.value.value)
            found.append((name, node.lineno))
    return found


def test_the_scan_sees_plain_called_and_renamed_fixtures() -> None:
    source = ("import pytest\n@pytest.fixture\ndef a(): ...\n@pytest.fixture(scope='module')\ndef b(): ...\n"
              "@pytest.fixture(name='c')\ndef c_fixture(): ...\ndef not_one(): ...\n")
    assert fixture_names(source) == [("a", 3), ("b", 5), ("c", 7)]


def test_no_two_fixtures_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(TESTS.glob("*.py")):
        for name, line in fixture_names(path.read_text()):
            where[name].append(f"{path.name}:{line}")
    assert len(where) > 40, "the scan found the suite's fixtures"
    assert {name: places for name, places in where.items() if len(places) > 1} == {}


def test_the_parse_helper_retries_only_cpythons_spurious_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = ast.parse, []

    def flaky(source: str, filename: str = "<unknown>") -> ast.Module:
        calls.append(source)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=141, after=160)")
        return real(source, filename)

    monkeypatch.setattr(ast, "parse", flaky)
    assert isinstance(parse_python("x = 1").body[0], ast.Assign)
    assert len(calls) == 2
    monkeypatch.setattr(ast, "parse", lambda *_a: (_ for _ in ()).throw(SystemError("something else")))
    with pytest.raises(SystemError, match="something else"):
        parse_python("x = 1")
