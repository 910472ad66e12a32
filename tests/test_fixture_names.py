"""Every fixture in tests/ has a name of its own: a module fixture named like another (`world`, `sandbox`,
`plugin`, ...) silently replaces it in that module, and shared names once caused a cross-module bug."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def fixture_names(source: str) -> list[tuple[str, int]]:
    """(name, line) of every @pytest.fixture in the source, honouring `name=`."""
    found = []
    for node in ast.walk(ast.parse(source)):
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
