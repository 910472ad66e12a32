"""The test tiers and the run's scheduling (tests/tiers.py): decided from fixtures, longest work first."""

from __future__ import annotations

from tests.tiers import SECOND_SANDBOX, schedule_ranks, tier_of


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
