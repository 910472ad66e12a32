"""How a terraform run looks on screen: log file, live line, plan table, apply progress, errors.

Terraform's own output (plain text, `-no-color`) goes line by line into one log file per command
(RunLog), whose path is printed once. Meanwhile the screen shows a live line (ops.console.Status):
for init/plan/validate what runs and for how long, for apply/destroy "resources done of total, the
one in flight, elapsed", read from terraform's progress lines ("X: Creating...", "X: Creation
complete after 2s"). A plan becomes a short table read from the plan's own output (checked against its
"Plan:" counts; else from `terraform show -json` of the saved plan): counts per action, the resources
grouped by kind, every replacement and deletion by address.
On failure terraform's error block is printed in full, not only the log path.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ops.console import Status, console, say
from ops.errors import CommandFailedError, ToolMissingError

KEEP_LOGS = 30
ERROR_LINES = 80
ACTIONS = ("create", "update", "replace", "destroy", "import")
_STYLE = {"create": "green", "update": "yellow", "replace": "bold magenta", "destroy": "bold red", "import": "cyan"}
_START = re.compile(r"^(?P<addr>.+?): (?P<verb>Creating|Modifying|Destroying)\.\.\.")
_DONE = re.compile(r"^(?P<addr>.+?): (?P<verb>Creation|Modifications|Destruction) complete after ")
_RESULT = re.compile(r"^(Apply|Destroy) complete! Resources: (?P<what>.+?)\.?$")
_VERBS = {"Creating": "creating", "Modifying": "updating", "Destroying": "destroying"}
# The plan terraform prints (before an auto-approved apply starts, or as `plan`'s output): one header per
# resource instance that changes ("  # aws_vpc.main will be created"; internal/command/jsonformat/plan.go,
# resourceChangeComment), after "Terraform will perform the following actions:", then the counts line.
_PLANNED = re.compile(r"^\s+# (?P<addr>\S+)(?: \(deposed object \S+\))? (?:\(imported from \S+\) )?(?P<what>will be "
                      r"created|will be updated in-place|must be replaced|is tainted, so must be replaced|will be "
                      r"replaced, as requested|will be replaced due to changes in replace_triggered_by|will be "
                      r"destroyed|will be imported)$")
_PLAN_LINE = re.compile(r"^Plan: \d+ to (add|import)")
_PLAN_COUNTS = re.compile(r"^Plan: (?:(?P<imported>\d+) to import, )?(?P<add>\d+) to add, (?P<change>\d+) to change, "
                          r"(?P<destroy>\d+) to destroy\.$")
# An import that also changes the object says so on the line after its header.
_IMPORTED_NOTE = re.compile(r'^\s+# \((?:imported from ".*"|will be imported first)\)$')
_ACTIONS_START = "Terraform will perform the following actions:"
_PLANNED_ACTION = {"will be created": "create", "will be updated in-place": "update", "must be replaced": "replace",
                   "is tainted, so must be replaced": "replace", "will be replaced, as requested": "replace",
                   "will be replaced due to changes in replace_triggered_by": "replace", "will be destroyed": "destroy",
                   "will be imported": "import"}


# ---- the log file ----------------------------------------------------------------------------


class RunLog:
    """One log file per command (all its terraform runs, each under a `$ terraform ...` header), mode 0600."""

    def __init__(self, folder: Path, *, out: TextIO) -> None:
        self.folder = folder
        self.out = out
        self.path: Path | None = None

    def open(self, argv: Sequence[str]) -> TextIO:
        if self.path is None:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self.path = self.folder / f"{stamp}-{os.getpid()}.log"
            _prune(self.folder, keep=KEEP_LOGS - 1)
            say(self.out, f"terraform's output: {self.path}")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fh = os.fdopen(fd, "a", encoding="utf-8")
        shown = " ".join([Path(argv[0]).name, *argv[1:]])
        fh.write(f"\n$ {shown}    # {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        fh.flush()
        return fh


def _prune(folder: Path, *, keep: int) -> None:
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        old.unlink(missing_ok=True)


# ---- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    address: str
    kind: str
    action: str


@dataclass(frozen=True)
class PlanSummary:
    changes: list[Change] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def expected_steps(self) -> dict[str, int]:
        """Address -> how many operations apply runs on it (a replacement is a destroy and a create)."""
        return {c.address: 2 if c.action == "replace" else 1 for c in self.changes if c.action != "import"}


def summarize(show: Mapping[str, Any]) -> PlanSummary:
    """The changes of `terraform show -json PLAN` (no-ops and data reads left out, imports kept)."""
    changes: list[Change] = []
    for item in show.get("resource_changes") or []:
        if not isinstance(item, dict) or item.get("mode", "managed") != "managed":
            continue
        change = item.get("change") or {}
        actions = list(change.get("actions") or [])
        if sorted(actions) == ["create", "delete"]:
            action = "replace"
        elif actions == ["create"]:
            action = "create"
        elif actions == ["update"]:
            action = "update"
        elif actions == ["delete"]:
            action = "destroy"
        elif change.get("importing"):
            action = "import"
        else:
            continue
        changes.append(Change(address=str(item.get("address", "")), kind=str(item.get("type", "")), action=action))
    return PlanSummary(changes)


def _planned_change(line: str) -> Change | None:
    """The change a plan's resource header line announces, None for any other line."""
    m = _PLANNED.match(line)
    return Change(m["addr"], kind_of(m["addr"]), _PLANNED_ACTION[m["what"]]) if m else None


def summary_from_plan_text(lines: Sequence[str]) -> PlanSummary | None:
    """The changes of a plan read from `terraform plan`'s own output, as summarize() reads them from `terraform
    show -json` of the saved plan: that is a terraform run of its own, which loads the provider's whole schema
    (~2 s of CPU for AWS). None when the headers do not add up to terraform's "Plan: ..." counts (a wording
    this reader does not know, a newer action): the caller asks `show -json` then."""
    changes: list[Change] = []
    imported_notes = 0
    counts: re.Match[str] | None = None
    started = False
    for line in lines:
        if not started:
            started = line.startswith(_ACTIONS_START)
        elif change := _planned_change(line):
            changes.append(change)
        elif _IMPORTED_NOTE.match(line):
            imported_notes += 1
        elif counts := _PLAN_COUNTS.match(line):
            break
    if counts is None:
        return None
    summary = PlanSummary(changes)
    read = (summary.count("create") + summary.count("replace"), summary.count("update"),
            summary.count("destroy") + summary.count("replace"), summary.count("import") + imported_notes)
    said = (int(counts["add"]), int(counts["change"]), int(counts["destroy"]), int(counts["imported"] or 0))
    return summary if read == said else None


def plan_table(env: str, summary: PlanSummary) -> tuple[Text, Table]:
    counts = ", ".join(f"{summary.count(a)} to {a}" for a in ACTIONS if a != "import" or summary.count(a))
    head = Text(f"plan for {env}: {counts}", style="bold")
    table = Table(box=None, show_header=False, padding=(0, 1, 0, 2), expand=False)
    table.add_column("action", no_wrap=True)
    table.add_column("resources", overflow="fold")
    for action in ("create", "update", "import"):
        kinds = Counter(c.kind for c in summary.changes if c.action == action)
        if kinds:
            text = ", ".join(k if n == 1 else f"{k} x{n}" for k, n in sorted(kinds.items()))
            table.add_row(Text(action, style=_STYLE[action]), text)
    # Replacements and deletions lose data or break connections: each one by name, never folded.
    for action in ("replace", "destroy"):
        for change in summary.changes:
            if change.action == action:
                table.add_row(Text(action.upper(), style=_STYLE[action]), Text(change.address, style=_STYLE[action]))
    return head, table


def kind_of(address: str) -> str:
    """The resource type of an address: `module.a.aws_subnet.x["b"]` -> `aws_subnet`."""
    parts = address.split(".")
    while len(parts) > 2 and parts[0] == "module":
        parts = parts[2:]
    return parts[0]


def print_plan(out: TextIO, env: str, summary: PlanSummary, *, view: Console | None = None) -> None:
    head, table = plan_table(env, summary)
    view = view or console(out)
    if view.is_terminal:
        view.print(head)
        view.print(table)
    else:
        # Plain text for logs: no padding after the last column.
        with view.capture() as captured:
            view.print(head)
            view.print(table)
        for line in captured.get().splitlines():
            say(out, line.rstrip())
    out.flush()


# ---- apply progress ------------------------------------------------------------------------------


class ApplyProgress:
    """Follows terraform apply/destroy output: resources done of total, the ones in flight, the result."""

    def __init__(self, summary: PlanSummary | None, *, command: str = "apply") -> None:
        self.command = command
        self.expected = summary.expected_steps() if summary is not None else {}
        self.total: int | None = len(self.expected) if summary is not None else None
        # Without a saved plan, the plan terraform prints before applying is read from its output.
        self.read_plan = summary is None
        self.planned: list[Change] = []
        self.plan: PlanSummary | None = None
        self.steps: Counter[str] = Counter()
        self.done: set[str] = set()
        self.in_flight: dict[str, str] = {}
        self.result = ""

    def feed(self, line: str) -> bool:
        """Take one output line; True when the view changed."""
        text = line.rstrip("\n")
        if self.read_plan and self.plan is None:
            if change := _planned_change(text):
                self.planned.append(change)
                return False
            if _PLAN_LINE.match(text):
                self.plan = PlanSummary(self.planned)
                self.expected = self.plan.expected_steps()
                self.total = len(self.expected)
                return True
        if m := _START.match(text):
            self.in_flight[m["addr"]] = _VERBS[m["verb"]]
            return True
        if m := _DONE.match(text):
            addr = m["addr"]
            self.in_flight.pop(addr, None)
            self.steps[addr] += 1
            if self.steps[addr] >= self.expected.get(addr, 1):
                self.done.add(addr)
            return True
        if m := _RESULT.match(text):
            self.result = m["what"]
            return True
        return False

    def text(self) -> str:
        count = f"{len(self.done)}/{self.total} done" if self.total is not None else f"{len(self.done)} done"
        if not self.in_flight:
            return count
        addr, verb = next(iter(self.in_flight.items()))
        more = f" (+{len(self.in_flight) - 1} more)" if len(self.in_flight) > 1 else ""
        return f"{count}; {verb} {addr}{more}"

    def result_line(self, env: str, seconds: float) -> str:
        what = self.result or f"{len(self.done)} resources changed"
        return f"{env}: {self.command} complete in {seconds:.1f} s: {what}"


# ---- running terraform quietly -------------------------------------------------------------------


def run_quiet(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: RunLog, out: TextIO, label: str,
              env_name: str, progress: ApplyProgress | None = None) -> tuple[int, list[str]]:
    """Run terraform with its output into the log and a live line on screen; (exit code, output lines).

    Ctrl-C is forwarded to terraform's process group and we wait for it to stop (it releases its
    state lock); from then on its lines are shown, then CommandFailedError(returncode=130).
    """
    lines: list[str] = []
    with log.open(argv) as fh, Status(out, label, quiet_plain=True) as status:
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    encoding="utf-8", errors="replace", process_group=0)
        except FileNotFoundError:
            raise ToolMissingError(f"{argv[0]} was not found; install Terraform >= 1.5 and put it on PATH") from None
        assert proc.stdout is not None
        interrupts = 0
        while True:
            try:
                line = proc.stdout.readline()
            except KeyboardInterrupt:
                interrupts += 1
                _interrupt(proc, interrupts, status)
                continue
            if not line:
                break
            fh.write(line)
            fh.flush()
            lines.append(line.rstrip("\n"))
            if interrupts:
                status.print(line.rstrip("\n"))
            if progress is not None and progress.feed(line):
                if progress.plan is not None and progress.read_plan:
                    # Shown once, before the progress: what this apply is about to do.
                    progress.read_plan = False
                    print_plan(out, env_name, progress.plan, view=status.console)
                status.update(progress.text())
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupts += 1
                _interrupt(proc, interrupts, status)
        fh.write(f"# exit code {code}\n")
        if interrupts:
            status.stop()
            raise CommandFailedError(f"interrupted; {label} stopped (exit code {code})", returncode=130)
        if progress is not None and code == 0:
            status.done(progress.result_line(env_name, status.elapsed), style="bold")
    return code, lines


def _interrupt(proc: subprocess.Popen[str], count: int, status: Status) -> None:
    if proc.poll() is not None:
        return
    if count == 1:
        status.print("interrupt: asking terraform to stop cleanly (it releases its state lock); press Ctrl-C again "
                     "to abort it hard")
    # The whole group, as a terminal would: terraform and its provider plugins.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)


def error_block(lines: Sequence[str]) -> list[str]:
    """Terraform's error block(s): from the first `Error:` line to the end; else the output's last lines."""
    start = next((i for i, ln in enumerate(lines) if ln.strip(" │╷╵").startswith("Error:")), None)
    block = list(lines[start:]) if start is not None else list(lines[-20:])
    while block and not block[-1].strip():
        block.pop()
    return block


def print_error(out: TextIO, lines: Sequence[str]) -> None:
    block = error_block(lines)
    shown = block[:ERROR_LINES]
    for line in shown:
        say(out, line)
    if len(block) > len(shown):
        say(out, f"... ({len(block) - len(shown)} more lines in the log)")


def note(out: TextIO, text: str) -> None:
    say(out, text)
