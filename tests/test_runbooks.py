"""The runbooks cannot rot: every `invoke ...` in them is checked with invoke's own parser against the real tasks.

Renaming a task or a flag in cli/ without updating runbooks/ fails here.
"""

from __future__ import annotations

import copy
import shlex
import sys
from pathlib import Path

import pytest
from invoke import Collection, Task, task

from ops import runbooks as rb
from ops.config import load_env
from ops.errors import OpsError
from tests.conftest import PROJECT_ROOT

REQUIRED = ("tunnel-and-connect", "migration", "ecs-shell", "relay-unhealthy", "revoke-access", "rotate-credentials",
            "restore-snapshot", "egress-switch", "audit", "sessions-fail-relay-online", "database-unhealthy",
            "relay-patching")


def _namespace() -> Collection:
    sys.path.insert(0, str(PROJECT_ROOT))
    import tasks

    return tasks.ns


BOOKS = rb.load_all()


def _commands() -> list[rb.Command]:
    return [c for b in BOOKS for c in b.commands() if c.is_invoke]


def test_the_required_runbooks_exist_in_order() -> None:
    assert tuple(b.name for b in BOOKS) == REQUIRED
    assert [b.number for b in BOOKS] == list(range(1, len(REQUIRED) + 1))


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.name)
def test_runbook_structure(book: rb.Runbook) -> None:
    assert rb.lint(book) == []
    steps = [c for c in book.commands(inline=False) if c.is_invoke and c.section == "Steps"]
    assert steps, f"{book.path.name}: no invoke command in its Steps"
    assert len(book.purpose) < 140, "the purpose is a one-liner"


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.name)
def test_every_invoke_command_parses_with_invokes_parser(book: rb.Runbook) -> None:
    ns = _namespace()
    commands = [c for c in book.commands() if c.is_invoke]
    assert commands
    problems = [p for c in commands if (p := rb.check_command(c, ns))]
    # What the sandbox test adds (`<!-- sandbox: args ... -->`) must parse too.
    for c in commands:
        for extra in c.markers.get("args", []):
            argv = [*shlex.split(c.text), *shlex.split(extra)]
            if problem := rb.check_argv(argv, ns):
                problems.append(f"{c.where} with sandbox args {extra}: {problem}")
    assert problems == []


def test_the_check_sees_inline_commands_and_every_required_command() -> None:
    texts = [c.text for c in _commands()]
    assert any(not c.fenced for c in _commands()), "inline `invoke ...` spans are checked too"
    for needed in ("invoke sessions ", "invoke sessions-terminate ", "invoke audit ", "invoke relay-restart ",
                   "invoke relay-replace ", "invoke tunnel ", "invoke migrate-downgrade ", "invoke ecs-shell "):
        assert any(t.startswith(needed) for t in texts), needed


def _renamed(ns: Collection, name: str, old: str, new: str) -> Collection:
    """A copy of the namespace where task `name` calls its flag `old` `new` instead."""
    original: Task = ns[name]  # type: ignore[type-arg]
    params = [p for p in original.argspec(original.body).parameters if p != old]

    src = f"def fake(c, {', '.join(f'{p}=None' for p in [*params, new])}):\n    pass\n"
    scope: dict[str, object] = {}
    exec(src, scope)  # noqa: S102 - a throwaway signature for the test
    fake = task(name=name, help={new: "renamed"}, auto_shortflags=False)(scope["fake"])
    out = Collection()
    for other in ns.task_names:
        out.add_task(fake if other == name else copy.copy(ns[other]), name=other)
    return out


def test_a_renamed_flag_breaks_the_check() -> None:
    ns = _renamed(_namespace(), "tunnel", "background", "detach")
    problems = [p for c in _commands() if (p := rb.check_command(c, ns))]
    assert problems, "renaming tunnel --background must break the runbooks"
    assert all("--background" in p for p in problems)
    assert any("01-tunnel-and-connect.md" in p for p in problems)


def test_a_renamed_task_and_a_bad_value_break_the_check(tmp_path: Path) -> None:
    ns = _namespace()
    assert "No idea what 'sessionz'" in rb.check_argv(["invoke", "sessionz", "--env", "x"], ns)
    assert "int()" in rb.check_argv(["invoke", "relay-restart", "--env", "x", "--timeout", "soon"], ns)
    assert "missing" in rb.check_argv(["invoke", "runbook"], ns) or "positional" in rb.check_argv(
        ["invoke", "runbook"], ns)
    assert rb.check_argv(["invoke", "relay-replace", "--env", "x", "--yes"], ns) == ""
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "01-x.md").write_text("# X\n\n**Purpose:** p\n\n## Steps\n\n```sh\ninvoke tunnel --env $ENV --detach\n"
                                    "aws s3 ls\n```\n\nthen `invoke sessions --env $ENV --everyone`\n")
    book = rb.load_all(folder)[0]
    problems = [p for c in book.commands() if c.is_invoke and (p := rb.check_command(c, ns))]
    assert len(problems) == 2 and "runbooks/01-x.md:8" in problems[0] and "--everyone" in problems[1]
    lint = rb.lint(book)
    assert any("aws s3 ls" in p for p in lint) and any("## Escalate" in p for p in lint)


def test_markers_attach_to_the_next_block() -> None:
    book = rb.find("relay-unhealthy")
    doctor = next(b for b in book.blocks if b.lines and "doctor" in b.lines[0][1] and b.section == "Steps")
    assert doctor.markers == {"exit": ["1"], "expect": ["is stopped"]}
    skipped = [b for b in rb.find("revoke-access").blocks if "skip" in b.markers]
    assert len(skipped) == 2


def test_find_by_name_number_and_file() -> None:
    assert rb.find("4").name == rb.find("relay-unhealthy").name == rb.find("04-relay-unhealthy.md").name
    with pytest.raises(OpsError) as info:
        rb.find("nope")
    assert "invoke runbooks" in info.value.next_step


def test_runbooks_and_runbook_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    from invoke.exceptions import Exit

    from cli.oncall import runbook, runbooks

    runbooks.body(None)
    index = capsys.readouterr().out
    for book in BOOKS:
        assert book.name in index and book.purpose in index
    runbook.body(None, name="audit")
    printed = capsys.readouterr().out
    source = (PROJECT_ROOT / "runbooks" / "09-audit.md").read_text()
    assert "<!-- sandbox:" in source and "<!-- sandbox:" not in printed
    kept = [ln for ln in source.splitlines() if not ln.strip().startswith("<!-- sandbox:")]
    assert printed.splitlines()[:len(kept)] == kept
    # Then who to call, from every env file: concrete names and channels, not "page someone".
    trailer = "\n".join(printed.splitlines()[len(kept):])
    assert "## Escalation contacts" in trailer
    for contact in load_env("prod").escalation.contacts:
        assert contact in trailer
    runbook.body(None, name="audit", env="staging")
    only_staging = capsys.readouterr().out.split("## Escalation contacts")[1]
    assert "- staging:" in only_staging and "- prod:" not in only_staging
    assert load_env("staging").escalation.contacts[0] in only_staging
    with pytest.raises(Exit) as info:
        runbook.body(None, name="no-such")
    assert str(info.value.message).startswith("error: no runbook 'no-such'; next: invoke runbooks")


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.name)
def test_every_aws_command_exists_in_the_cli_model_and_names_its_region(book: rb.Runbook) -> None:
    problems = [p for c in book.commands() if c.is_aws and (p := rb.check_aws_command(c))]
    assert problems == []


def test_the_aws_check_sees_the_lines_it_must() -> None:
    commands = [c for b in BOOKS for c in b.commands() if c.is_aws]
    assert any(not c.fenced for c in commands), "inline `aws ...` spans are checked too"
    texts = " ".join(c.text for c in commands)
    for needed in ("aws rds create-db-snapshot", "aws rds wait db-snapshot-available", "aws ecs update-service",
                   "aws rds restore-db-instance-from-db-snapshot", "aws athena start-query-execution"):
        assert needed in texts, needed


@pytest.mark.parametrize(("text", "problem"), [
    ("aws rds create-db-snapshots --db-instance-identifier x --db-snapshot-identifier y --region r",
     "rds has no operation 'create-db-snapshots'"),
    ("aws rds create-db-snapshot --db-instance-identifer x --db-snapshot-identifier y --region r",
     "has no option --db-instance-identifer"),
    ("aws rds create-db-snapshot --region r", "requires --db-snapshot-identifier, --db-instance-identifier"),
    ("aws rds create-db-snapshot --db-instance-identifier x --db-snapshot-identifier y", "no --region"),
    ("aws rds wait db-snapshot-ready --db-snapshot-identifier y --region r", "no waiter 'db-snapshot-ready'"),
    ("aws rdss describe-db-instances --region r", "unknown service 'rdss'"),
    ("aws ecs update-service --cluster c --service s --force-new-deploy --region r", "no option --force-new-deploy"),
    ("aws rds modify-db-instance --db-instance-identifier x --no-apply-immediatly --region r",
     "no option --no-apply-immediatly"),
])
def test_a_misspelt_aws_operation_or_parameter_breaks_the_check(text: str, problem: str) -> None:
    assert problem in rb.check_aws(text)


def test_valid_aws_forms_pass() -> None:
    for text in ("aws rds modify-db-instance --db-instance-identifier x --no-apply-immediately --region r",
                 "aws cloudtrail lookup-events --max-items 5 --region r",  # CLI paging option
                 "aws ec2 describe-instances --filters Name=tag:a,Values=b Name=c,Values=d --output json --region r",
                 "aws s3api list-buckets --region r", "aws logs tail /x --follow --region r", "aws sso login"):
        assert rb.check_aws(text) == "", text


def test_a_misspelt_aws_line_in_a_runbook_fails(tmp_path: Path) -> None:
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "01-x.md").write_text("# X\n\n**Purpose:** p\n\n## Steps\n\n```sh\n"
                                    "aws rds describe-db-snapshot --db-instance-identifier x --region r\n```\n\n"
                                    "and `aws rds reboot-db-instance --db-instance-identifier x`\n")
    book = rb.load_all(folder)[0]
    problems = [p for c in book.commands() if c.is_aws and (p := rb.check_aws_command(c))]
    assert len(problems) == 2
    assert "runbooks/01-x.md:8" in problems[0] and "no operation 'describe-db-snapshot'" in problems[0]
    assert "runbooks/01-x.md:11" in problems[1] and "no --region" in problems[1]
