"""The on-call runbooks (`runbooks/NN-name.md`): index, lookup, and the commands they contain.

A runbook is Markdown with a `# Title`, a `**Purpose:** ...` line (the one-liner `invoke runbooks`
shows) and the sections of SECTIONS. Commands live in fenced ```sh blocks (one command a line) and
in inline code spans starting with `invoke `. Both are checked against invoke's own parser
(`check_argv`), so renaming a task or a flag breaks the test suite, not the night of the on-call.

Sandbox markers: HTML comments right before a fenced block tell the end-to-end test
(tests/test_runbooks_sandbox.py) how to run that block in the sandbox; a reader of the rendered
Markdown does not see them:

    <!-- sandbox: skip WHY -->     not sandbox-safe (real IAM, snapshot restore, editing envs/)
    <!-- sandbox: exit N -->      expected exit status (default 0)
    <!-- sandbox: expect TEXT -->  the output contains TEXT (may repeat)
    <!-- sandbox: stdin TEXT -->   answer typed at the prompt (e.g. y)
    <!-- sandbox: args ARGS -->    arguments added in the sandbox only (e.g. --yes where a terminal is needed)

Variables written `$NAME` (e.g. `$ENV`) are set by the reader (`export ENV=prod`) and by the test.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.config import PROJECT_ROOT
from ops.errors import OpsError

RUNBOOKS_DIR = PROJECT_ROOT / "runbooks"
SECTIONS = ("When to use it", "Preconditions", "Steps", "Verify", "Roll back", "Escalate")
MARKER_KINDS = ("skip", "exit", "expect", "stdin", "args")
_FILE_RE = re.compile(r"^(\d{2})-([a-z0-9-]+)\.md$")
_MARKER_RE = re.compile(r"^\s*<!--\s*sandbox:\s*(\w+)\s*(.*?)\s*-->\s*$")
_FENCE_RE = re.compile(r"^\s*```\s*(\w*)\s*$")
_INLINE_RE = re.compile(r"`(invoke [^`]+)`")
_PURPOSE_RE = re.compile(r"^\*\*Purpose:\*\*\s*(.+)$")


@dataclass(frozen=True)
class Command:
    """One `invoke ...` (or other) command line of a runbook."""

    runbook: str
    line: int
    text: str
    section: str
    fenced: bool
    markers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_invoke(self) -> bool:
        return self.text.startswith("invoke ") or self.text == "invoke"

    @property
    def where(self) -> str:
        return f"runbooks/{self.runbook}:{self.line}"


@dataclass(frozen=True)
class Block:
    section: str
    line: int
    language: str
    lines: tuple[tuple[int, str], ...]
    markers: dict[str, list[str]]


@dataclass(frozen=True)
class Runbook:
    path: Path
    number: int
    name: str
    title: str
    purpose: str
    text: str
    sections: tuple[str, ...]
    blocks: tuple[Block, ...]

    def for_reading(self) -> str:
        """The text without the sandbox markers (HTML comments only the end-to-end test reads)."""
        return "".join(line for line in self.text.splitlines(keepends=True) if not _MARKER_RE.match(line))

    def commands(self, *, inline: bool = True) -> list[Command]:
        """Every command: the lines of fenced blocks (comments and blanks left out) and inline `invoke ...`."""
        found: list[Command] = []
        for block in self.blocks:
            for line_no, line in block.lines:
                text = line.strip()
                if text and not text.startswith("#"):
                    found.append(Command(self.path.name, line_no, text, block.section, True, block.markers))
        if inline:
            section = ""
            in_fence = False
            for line_no, line in enumerate(self.text.splitlines(), 1):
                if _FENCE_RE.match(line):
                    in_fence = not in_fence
                    continue
                if in_fence:
                    continue
                if line.startswith("## "):
                    section = line[3:].strip()
                for match in _INLINE_RE.finditer(line):
                    found.append(Command(self.path.name, line_no, match.group(1).strip(), section, False))
        return sorted(found, key=lambda c: c.line)


def parse(path: Path) -> Runbook:
    match = _FILE_RE.match(path.name)
    if not match:
        raise OpsError(f"runbook file name {path.name} is not NN-name.md", next_step=f"rename {path}")
    text = path.read_text(encoding="utf-8")
    title = purpose = ""
    sections: list[str] = []
    blocks: list[Block] = []
    pending: dict[str, list[str]] = {}
    section = ""
    fence: tuple[int, str, list[tuple[int, str]], dict[str, list[str]]] | None = None
    for line_no, line in enumerate(text.splitlines(), 1):
        fenced = _FENCE_RE.match(line)
        if fence is not None:
            if fenced and not fenced.group(1):
                blocks.append(Block(section, fence[0], fence[1], tuple(fence[2]), fence[3]))
                fence = None
            else:
                fence[2].append((line_no, line))
            continue
        if fenced:
            fence = (line_no, fenced.group(1), [], pending)
            pending = {}
            continue
        marker = _MARKER_RE.match(line)
        if marker:
            pending.setdefault(marker.group(1), []).append(marker.group(2))
            continue
        if line.strip():
            pending = {}
        if line.startswith("# ") and not title:
            title = line[2:].strip()
        elif line.startswith("## "):
            section = line[3:].strip()
            sections.append(section)
        elif not purpose and _PURPOSE_RE.match(line):
            purpose = _PURPOSE_RE.match(line).group(1).strip()  # type: ignore[union-attr]
    if fence is not None:
        raise OpsError(f"runbooks/{path.name}:{fence[0]}: code block is never closed", next_step="add the closing ```")
    return Runbook(path=path, number=int(match.group(1)), name=match.group(2), title=title, purpose=purpose,
                   text=text, sections=tuple(sections), blocks=tuple(blocks))


def load_all(folder: Path = RUNBOOKS_DIR) -> list[Runbook]:
    paths = sorted(p for p in folder.glob("*.md") if _FILE_RE.match(p.name))
    if not paths:
        raise OpsError(f"no runbooks in {folder}", next_step="git checkout runbooks/")
    return [parse(p) for p in paths]


def find(name: str, folder: Path = RUNBOOKS_DIR) -> Runbook:
    books = load_all(folder)
    key = name.strip().lower().removesuffix(".md")
    for book in books:
        if key in (book.name, book.path.stem, f"{book.number:02d}", str(book.number)):
            return book
    raise OpsError(f"no runbook {name!r}", next_step="invoke runbooks (lists them: "
                   + ", ".join(b.name for b in books) + ")")


def format_index(books: list[Runbook]) -> str:
    width = max(len(b.name) for b in books)
    lines = [f"{b.number:>2}  {b.name:<{width}}  {b.purpose}" for b in books]
    return "\n".join(lines) + "\n\nprint one with: invoke runbook NAME (e.g. invoke runbook " + books[0].name + ")"


def lint(book: Runbook) -> list[str]:
    """Structural problems: missing title, purpose or section; unknown marker; a runnable block with a
    line that is neither an `invoke` command nor `export`/a comment (mark such blocks `skip`)."""
    problems: list[str] = []
    where = f"runbooks/{book.path.name}"
    if not book.title:
        problems.append(f"{where}: no '# Title' line")
    if not book.purpose:
        problems.append(f"{where}: no '**Purpose:** ...' line")
    for wanted in SECTIONS:
        if wanted not in book.sections:
            problems.append(f"{where}: no '## {wanted}' section")
    for block in book.blocks:
        for kind in block.markers:
            if kind not in MARKER_KINDS:
                problems.append(f"{where}:{block.line}: unknown sandbox marker {kind!r} (known: {MARKER_KINDS})")
        if "skip" in block.markers:
            continue
        for line_no, line in block.lines:
            text = line.strip()
            if text and not text.startswith(("#", "invoke ", "export ")):
                problems.append(f"{where}:{line_no}: `{text}` is not an invoke command; mark the block "
                                "<!-- sandbox: skip WHY --> if it cannot run in the sandbox")
    return problems


def _contexts(namespace: Any) -> list[Any]:
    from invoke.parser.context import ParserContext

    contexts = []
    for name, aliases in namespace.task_names.items():
        task = namespace[name]
        # invoke pops entries from task.help while building Arguments: work on a copy.
        probe = copy.copy(task)
        probe.help = dict(task.help)
        contexts.append(ParserContext(name=name, aliases=aliases, args=probe.get_arguments()))
    return contexts


def check_argv(argv: list[str], namespace: Any) -> str:
    """'' if invoke would accept `argv` (program name first) for this namespace, else the problem."""
    from invoke.exceptions import ParseError
    from invoke.parser.context import ParserContext
    from invoke.parser.parser import Parser
    from invoke.program import Program

    if not argv or argv[0] != "invoke":
        return "does not start with invoke"
    core = ParserContext(args=Program().core_args())
    try:
        core_result = Parser(initial=core, ignore_unknown=True).parse_argv(argv[1:])
        core = ParserContext(args=Program().core_args())
        result = Parser(initial=core, contexts=_contexts(namespace)).parse_argv(core_result.unparsed)
    except ParseError as exc:
        return str(exc)
    except ValueError as exc:  # a value of the wrong type, e.g. --timeout abc
        return f"bad value: {exc}"
    tasks = list(result[1:])
    if not tasks and not any(a.got_value for a in core_result[0].args.values()):
        return "names no task"
    for ctx in tasks:
        missing = [str(a.name) for a in ctx.missing_positional_args]
        if missing:
            return f"task {ctx.name}: missing {', '.join(missing)}"
    return ""


def check_command(command: Command, namespace: Any) -> str:
    try:
        argv = shlex.split(command.text, comments=True)
    except ValueError as exc:
        return f"{command.where}: cannot split `{command.text}` ({exc})"
    problem = check_argv(argv, namespace)
    return f"{command.where}: `{command.text}`: {problem}" if problem else ""
