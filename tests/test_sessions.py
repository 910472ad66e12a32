"""Sessions: owner matching, --since parsing, which sessions a terminate picks, the table (no AWS)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ops.errors import OpsError
from ops.sessions import SessionInfo, format_table, owner_matches, parse_since, select_for_termination

NOW = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
ALICE = "arn:aws:iam::123456789012:user/alice"
ROLE_SESSION = "arn:aws:sts::123456789012:assumed-role/Engineers/bob@example.com"


def sess(sid: str, owner: str, status: str = "Connected", kind: str = "relay") -> SessionInfo:
    return SessionInfo(session_id=sid, target="i-0123" if kind == "relay" else "ecs:bastionless-x_t_r", owner=owner,
                       started=NOW, ended=None, reason="INC-1 look", status=status, kind=kind)


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", datetime(2026, 11, 30, 4, 30, tzinfo=UTC)),
    ("24h", datetime(2026, 11, 29, 5, 0, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 23, 5, 0, tzinfo=UTC)),
    ("2026-11-29T22:00", datetime(2026, 11, 29, 22, 0, tzinfo=UTC)),
    ("2026-11-29T22:00:00Z", datetime(2026, 11, 29, 22, 0, tzinfo=UTC)),
])
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


def test_parse_since_rejects_nonsense_with_the_fix() -> None:
    with pytest.raises(OpsError) as info:
        parse_since("yesterday", now=NOW)
    assert "--since 'yesterday'" in info.value.message and "24h" in info.value.next_step


def test_owner_matching() -> None:
    assert owner_matches(ALICE, ALICE)
    assert not owner_matches("arn:aws:iam::123456789012:user/alice2", ALICE)
    assert owner_matches(ROLE_SESSION, "arn:aws:iam::123456789012:role/Engineers")
    assert owner_matches(ROLE_SESSION, "arn:aws:iam::123456789012:role/path/Engineers")
    assert not owner_matches(ROLE_SESSION, "arn:aws:iam::123456789012:role/Engineers2")
    assert not owner_matches(ROLE_SESSION, "arn:aws:iam::999999999999:role/Engineers")
    assert owner_matches(ROLE_SESSION, "arn:aws:sts::123456789012:assumed-role/Engineers/*")
    assert not owner_matches(ALICE, "")


def test_select_for_termination_takes_only_active_sessions_of_the_owner() -> None:
    listed = [sess("a1", ALICE), sess("a2", ALICE, kind="ecs"), sess("a3", ALICE, status="Terminated"),
              sess("b1", ROLE_SESSION)]
    assert [s.session_id for s in select_for_termination(listed, owner=ALICE)] == ["a1", "a2"]
    assert [s.session_id for s in select_for_termination(listed, session_id="b1")] == ["b1"]
    assert select_for_termination(listed, session_id="a3") == []
    with pytest.raises(OpsError):
        select_for_termination(listed, owner=ALICE, session_id="a1")
    with pytest.raises(OpsError):
        select_for_termination(listed)


def test_table_shows_id_owner_start_status_and_reason() -> None:
    text = format_table([sess("a1", ALICE), sess("a2", ALICE, kind="ecs")])
    header, first, second = text.splitlines()
    assert header.split() == ["session", "owner", "started", "(UTC)", "status", "target", "reason"]
    assert first.startswith("a1") and ALICE in first and "2026-11-30 05:00:00Z" in first and "INC-1 look" in first
    assert "(ECS Exec)" in second
    assert format_table([]) == "no sessions"


@pytest.mark.parametrize("argv", [
    ("sessions", {"env": "sandbox"}),
    ("sessions_terminate", {"env": "sandbox", "owner": ALICE, "yes": True}),
    ("audit", {"env": "sandbox"}),
    ("relay_restart", {"env": "sandbox", "yes": True}),
])
def test_without_a_running_sandbox_each_command_says_how_to_start_it(
        argv: tuple[str, dict[str, object]], tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from invoke.exceptions import Exit

    from cli import oncall

    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(tmp_path))
    name, kwargs = argv
    with pytest.raises(Exit) as info:
        getattr(oncall, name).body(None, **kwargs)
    assert info.value.message == "error: the sandbox is not running; next: invoke sandbox up"
    assert info.value.code == 1


def test_unknown_environment_is_one_line_with_the_fix() -> None:
    from invoke.exceptions import Exit

    from cli.oncall import sessions

    with pytest.raises(Exit) as info:
        sessions.body(None, env="nope")
    assert str(info.value.message).startswith("error: unknown environment 'nope'")
    assert "copy envs/staging.toml" in str(info.value.message)
