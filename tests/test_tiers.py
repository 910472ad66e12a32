"""The test tiers and the run's scheduling (tests/tiers.py): decided from fixtures, longest work first."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tiers import SECOND_SANDBOX, needs_tool, pytest_runtest_setup, schedule_ranks, tier_of


def test_the_tier_comes_from_the_fixtures_a_test_uses() -> None:
    assert tier_of(["tmp_path", "monkeypatch"]) == "unit"
    assert tier_of(["tmp_path", "moto_url"]) == "integration"
    assert tier_of(["tmp_path"], slow=True) == "integration", "an old hand mark never makes a unit test"
    assert tier_of(["sandbox_session", "moto_url"]) == "e2e"
    assert tier_of(["terraform_bin"]) == "e2e"


def test_the_longest_work_is_scheduled_first_and_a_group_keeps_its_best_rank() -> None:
    entries = [("tests/test_config.py::test_a", "unit"),
               ("tests/test_tunnel_sandbox.py", "integration"),
               ("sandbox", "e2e"),
               ("tests/test_sandbox_e2e.py", "e2e"),
               ("tests/test_mixed.py", "unit"),
               ("tests/test_mixed.py", "integration"),
               (SECOND_SANDBOX, "e2e"),
               ("synth", "integration")]
    rank = schedule_ranks(entries)
    order = sorted(dict.fromkeys(k for k, _ in entries), key=lambda k: rank[k])
    assert order[:2] == ["sandbox", SECOND_SANDBOX], "the deployed sandboxes first: the longest groups"
    assert order[2] == "tests/test_sandbox_e2e.py"
    assert order[-1] == "tests/test_config.py::test_a", "unit tests fill the gaps at the end"
    assert rank["tests/test_mixed.py"][0] == rank["synth"][0], "a module with one integration test is integration"
    assert order.index("tests/test_mixed.py") < order.index("synth"), "within a tier, more tests first"


class _Item:
    """Just enough of a pytest item for the set-up hook: its marks."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [m for m in self.marks if m.name == name]


def test_a_missing_program_skips_on_a_laptop_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    item: Any = _Item(needs_tool("sh"), needs_tool("no-such-program-here", "psql is not installed"))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BASTIONLESS_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="psql is not installed"):
        pytest_runtest_setup(item)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"psql is not installed \(required in CI\)"):
        pytest_runtest_setup(item)
    pytest_runtest_setup(_Item(needs_tool("sh")))  # type: ignore[arg-type]  # present: nothing happens
