"""Follow every runbook in the sandbox, as a person would: each sandbox-safe command, in order, typed into bash.

Blocks marked `<!-- sandbox: skip WHY -->` (real IAM, snapshot restore, editing envs/) are not run; the
others run with `ENV=sandbox`, and must exit as marked (default 0) and print what their markers
expect. Where a runbook starts from a broken state (relay down, someone to lock out), the test breaks
the sandbox that way first, and afterwards checks what the runbook promises (relay Online, no session
of that person left, database at head, no tunnel left open).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ops import runbooks as rb
from tests.conftest import PROJECT_ROOT
from tests.sandbox_support import Sandbox
from tests.test_sessions_sandbox import IamUser, active_ids, moto, open_exec_session, open_relay_session, person
from tests.tty_support import run_on_terminal

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.second_sandbox]

TICKET = "SANDBOX-4711"
_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


@dataclass
class Run:
    book: rb.Runbook
    variables: dict[str, str]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def expand(text: str, variables: dict[str, str]) -> str:
    return _VAR_RE.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def follow(box: Sandbox, book: rb.Runbook, home: Path, **extra: str) -> Run:
    variables = {"ENV": box.cfg.name, "REGION": box.cfg.region, "TICKET": TICKET, **extra}
    env = box.subprocess_env(HOME=str(home), PATH=f"{PROJECT_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
                             **variables)
    env.pop("PGSERVICEFILE", None)
    env.pop("PGPASSFILE", None)
    result = Run(book=book, variables=variables)
    for block in book.blocks:
        lines = [(n, ln.strip()) for n, ln in block.lines if ln.strip() and not ln.strip().startswith("#")]
        if "skip" in block.markers:
            result.skipped += [f"{book.path.name}:{n}: {text}  ({block.markers['skip'][0]})" for n, text in lines]
            continue
        expected_exit = int(block.markers.get("exit", ["0"])[0])
        stdin = "".join(f"{answer}\n" for answer in block.markers.get("stdin", []))
        extra_args = " ".join(block.markers.get("args", []))
        output = ""
        for line_no, text in lines:
            if text.startswith("export "):
                name = text.split()[1].split("=", 1)[0]
                assert name in variables, f"{book.path.name}:{line_no}: the test does not set ${name}"
                continue
            command = f"{text} {extra_args}".strip()
            if stdin:
                # Confirmations are typed on a terminal (ops.confirm refuses a piped answer).
                proc = run_on_terminal(["bash", "-c", command], answer=stdin, cwd=PROJECT_ROOT, env=env, timeout=600)
            else:
                proc = subprocess.run(["bash", "-c", command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                                      text=True, input=stdin, timeout=600, check=False)
            output += proc.stdout + proc.stderr
            result.ran.append(f"{book.path.name}:{line_no}: {command}")
            assert proc.returncode == expected_exit, (
                f"{book.path.name}:{line_no}: `{command}` exited {proc.returncode}, the runbook expects "
                f"{expected_exit}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        for wanted in block.markers.get("expect", []):
            text = expand(wanted, variables)
            assert text in output, f"{book.path.name}:{block.line}: expected {text!r} in:\n{output}"
        result.outputs.append(output)
    assert result.ran, f"{book.path.name}: nothing ran in the sandbox"
    print(f"\n{book.path.name}: ran {len(result.ran)}, skipped {len(result.skipped)} (not sandbox-safe)")
    for line in result.skipped:
        print(f"  skipped {line}")
    return result


@contextmanager
def nothing(box: Sandbox) -> Iterator[dict[str, str]]:
    yield {}


@contextmanager
def relay_down(box: Sandbox) -> Iterator[dict[str, str]]:
    """Runbook 4 starts from a stopped relay."""
    from ops.relay import current_relay

    relay = current_relay(box.cfg).instance_id
    moto(box, "ec2").stop_instances(InstanceIds=[relay])
    yield {"OLD_RELAY": relay}


@contextmanager
def someone_to_lock_out(box: Sandbox) -> Iterator[dict[str, str]]:
    """Runbook 5: a person with a tunnel session and an ECS Exec shell open; a colleague whose session stays."""
    alice, bob = person(box), person(box, "bob")
    sessions = [open_relay_session(box, alice, "copying data"), open_exec_session(box, alice)]
    keep = open_relay_session(box, bob, "unrelated work")
    yield {"OWNER_ARN": alice.arn, "ALICE_SESSIONS": ",".join(sessions), "BOB_SESSION": keep}
    moto_terminate(box, keep)


def moto_terminate(box: Sandbox, sid: str) -> None:
    from tests.test_sessions_sandbox import moto_ssm

    if sid in active_ids(box):
        moto_ssm(box).terminate_session(SessionId=sid)


@contextmanager
def a_session_with_a_reason(box: Sandbox) -> Iterator[dict[str, str]]:
    """Runbook 9 audits something: one session with a ticket in its reason, ended again."""
    who: IamUser = person(box, "carol")
    sid = open_relay_session(box, who, f"{TICKET} audit me")
    moto_terminate(box, sid)
    yield {"AUDITED_SESSION": sid, "AUDITED_OWNER": who.arn}


def check_tunnel(box: Sandbox, run: Run) -> None:
    from ops import tunnels_state

    assert not [t for t in tunnels_state.list_tunnels() if t.env == box.cfg.name], "step 5 closed the tunnel"
    assert any("ready" in o and "127.0.0.1:" in o for o in run.outputs), "step 2 opened it"


def check_migration(box: Sandbox, run: Run) -> None:
    assert "pending: 1" in run.outputs[-2] and "pending: none" not in run.outputs[-2], "the rollback was checked"


def check_relay(box: Sandbox, run: Run) -> None:
    from ops import deploy
    from ops.discovery import find_relay

    relay = find_relay(box.cfg)  # raises unless running and Online
    old = run.variables["OLD_RELAY"]
    assert relay.instance_id != old, "step 4 replaced the relay"
    assert relay.ping_status == "Online"
    # The suite's one relay replacement through terraform (tests/test_relay_sandbox.py has the restarts): the
    # plan names the replacement, the prompt says what it replaces, and afterwards the Terraform state is the
    # truth: its output names the new relay and a plan has nothing to do. The verify steps reach the database
    # through the new relay as alice. (Progress while waiting for Online: the restart tests, same wait.)
    (replaced,) = [out for out in run.outputs if "relay replaced:" in out]
    assert f"relay replaced: {old} -> {relay.instance_id}, Online" in replaced
    assert re.search(r"^\s+REPLACE\s+aws_instance\.", replaced, re.MULTILINE), "the plan names the replacement"
    assert "Replace the relay (aws_instance." in replaced
    assert deploy.outputs(box.cfg)["relay_instance_id"] == relay.instance_id
    assert deploy.plan(box.cfg, detailed_exitcode=True) == 0


def check_revoked(box: Sandbox, run: Run) -> None:
    active = active_ids(box)
    assert not set(run.variables["ALICE_SESSIONS"].split(",")) & active, "her sessions are gone"
    assert run.variables["BOB_SESSION"] in active, "only hers"


def check_audit(box: Sandbox, run: Run) -> None:
    data = json.loads(_json_of(run))
    assert data["emulated"] is True
    starts = [e for e in data["events"] if e["session_id"] == run.variables["AUDITED_SESSION"]]
    assert {e["event"] for e in starts} == {"StartSession", "TerminateSession"}
    start = next(e for e in starts if e["event"] == "StartSession")
    assert start["caller"] == run.variables["AUDITED_OWNER"] and start["reason"] == f"{TICKET} audit me"
    assert start["source_ip"] == "127.0.0.1"


def _json_of(run: Run) -> str:
    text = next(o for o in run.outputs if '"emulated"' in o)
    return text[text.index("{"):text.rindex("}") + 1]


def check_db_ok(box: Sandbox, run: Run) -> None:
    # The verify query runs as you: the sandbox lists people, and its first person is alice.
    assert any(" alice" in o for o in run.outputs)


def check_rotated_master_works(box: Sandbox, run: Run) -> None:
    # The rotation is verified with the master password itself, read through --break-glass.
    assert any(" app_admin" in o for o in run.outputs), run.outputs
    assert any("BREAK-GLASS" in o for o in run.outputs), "break-glass says so loudly"


def check_sessions_work(box: Sandbox, run: Run) -> None:
    assert any("select works" in o for o in run.outputs), "the verify step's query came back through a tunnel"
    assert any("preferences" in o and "matches the stack" in o for o in run.outputs), "doctor compared them"


def check_patch_report(box: Sandbox, run: Run) -> None:
    doctor = next(o for o in run.outputs if "relay SSM ping" in o)
    assert "relay patches" in doctor and "relay agent security fixes" in doctor


SETUP: dict[str, Callable[[Sandbox], object]] = {
    "relay-unhealthy": relay_down, "revoke-access": someone_to_lock_out, "audit": a_session_with_a_reason}
PROMISE: dict[str, Callable[[Sandbox, Run], None]] = {
    "tunnel-and-connect": check_tunnel, "migration": check_migration, "relay-unhealthy": check_relay,
    "revoke-access": check_revoked, "audit": check_audit, "rotate-credentials": check_rotated_master_works,
    "restore-snapshot": check_db_ok, "egress-switch": check_db_ok, "sessions-fail-relay-online": check_sessions_work,
    "database-unhealthy": check_db_ok, "relay-patching": check_patch_report}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.mark.parametrize("book", rb.load_all(), ids=lambda b: b.name)
def test_following_the_runbook_in_the_sandbox_does_what_it_promises(sandbox: Sandbox, book: rb.Runbook,
                                                                    home: Path) -> None:
    setup = SETUP.get(book.name, nothing)
    try:
        with setup(sandbox) as variables:  # type: ignore[attr-defined]
            run = follow(sandbox, book, home, **variables)
            promise = PROMISE.get(book.name)
            if promise is not None:
                promise(sandbox, run)
    finally:
        # Leave the shared sandbox as the next test expects it: relay running, database at head, no tunnel.
        from ops import tunnels_state
        from ops.relay import current_relay

        for record in tunnels_state.list_tunnels():
            if record.env == sandbox.cfg.name:
                tunnels_state.close(record.env)
        relay = current_relay(sandbox.cfg)
        if relay.state == "stopped":
            moto(sandbox, "ec2").start_instances(InstanceIds=[relay.instance_id])
        if book.name == "migration":
            subprocess.run(["bash", "-c", "invoke migrate --env sandbox --yes"], cwd=PROJECT_ROOT, timeout=300,
                           env=sandbox.subprocess_env(PATH=f"{PROJECT_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"),
                           capture_output=True, check=False)
