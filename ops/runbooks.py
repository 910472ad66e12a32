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
import difflib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.config import PROJECT_ROOT, EnvConfig
from ops.errors import OpsError

RUNBOOKS_DIR = PROJECT_ROOT / "runbooks"
SECTIONS = ("When to use it", "Preconditions", "Steps", "Verify", "Roll back", "Escalate")
MARKER_KINDS = ("skip", "exit", "expect", "stdin", "args")
_FILE_RE = re.compile(r"^(\d{2})-([a-z0-9-]+)\.md$")
_MARKER_RE = re.compile(r"^\s*<!--\s*sandbox:\s*(\w+)\s*(.*?)\s*-->\s*$")
_FENCE_RE = re.compile(r"^\s*```\s*(\w*)\s*$")
_INLINE_RE = re.compile(r"`(invoke [^`]+)`")
_INLINE_AWS_RE = re.compile(r"`(aws [^`]+)`")
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
    def is_aws(self) -> bool:
        return self.text.startswith("aws ")

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
                for regex in (_INLINE_RE, _INLINE_AWS_RE):
                    for match in regex.finditer(line):
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


def format_escalation(cfgs: list[EnvConfig]) -> str:
    """Who to call and how, per environment, from `[escalation] contacts` of the env files."""
    lines = ["## Escalation contacts (from envs/<env>.toml [escalation], in order)", ""]
    for cfg in cfgs:
        where = f"envs/{cfg.source.name}"
        if not cfg.escalation.contacts:
            lines.append(f"- {cfg.name}: none listed in {where}; add [escalation] contacts = [\"...\"]")
            continue
        lines.append(f"- {cfg.name}:")
        lines += [f"  {i}. {contact}" for i, contact in enumerate(cfg.escalation.contacts, 1)]
    return "\n".join(lines) + "\n"


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


# The AWS CLI's own options, accepted by every operation (`aws help`); the paging ones by paginated operations.
AWS_GLOBAL_OPTIONS = frozenset({
    "region", "output", "query", "profile", "endpoint-url", "no-verify-ssl", "no-paginate", "debug",
    "no-cli-pager", "cli-input-json", "cli-input-yaml", "generate-cli-skeleton", "color", "no-sign-request",
    "ca-bundle", "cli-read-timeout", "cli-connect-timeout", "cli-binary-format", "cli-auto-prompt",
})
AWS_PAGING_OPTIONS = frozenset({"max-items", "starting-token", "page-size"})
# CLI command name -> botocore service name, where they differ.
AWS_CLI_SERVICES = {"s3api": "s3", "configservice": "config"}
# Commands the CLI adds on top of the service models (awscli customizations), with whether they need --region.
AWS_CUSTOM_COMMANDS = {("sso", "login"): False, ("logs", "tail"): True, ("rds", "generate-db-auth-token"): True}


def check_aws(text: str) -> str:
    """'' if the AWS CLI would accept `text` as far as its service model says, else the problem.

    Checked against botocore's model (what the CLI is generated from): the service, the operation
    (or `wait WAITER`), every `--option` (a model parameter, `--no-` for a boolean one, or a CLI global
    option), every required parameter present; and `--region` always given, because on-call shells
    often have no default region or the wrong one.
    """
    from botocore import xform_name
    from botocore.exceptions import UnknownServiceError

    from ops import aws

    try:
        argv = shlex.split(text, comments=True)
    except ValueError as exc:
        return f"cannot split ({exc})"
    if len(argv) < 3 or argv[0] != "aws":
        return "expected `aws SERVICE OPERATION --option value ...`"
    cli_service, operation = argv[1], argv[2]
    options, rest = _aws_options(argv[3:])
    custom = AWS_CUSTOM_COMMANDS.get((cli_service, operation))
    if custom is not None:
        if custom and "region" not in options:
            return "no --region (on-call shells often have none, or the wrong one)"
        return ""
    session = aws.models()
    service = AWS_CLI_SERVICES.get(cli_service, cli_service)
    try:
        model = session.get_service_model(service)
    except UnknownServiceError:
        return f"unknown service {cli_service!r}"
    names = {xform_name(op, "-"): op for op in model.operation_names}
    if operation == "wait":
        if not rest:
            return "`wait` needs a waiter name"
        waiters = session.get_waiter_model(service)
        by_cli = {xform_name(w, "-"): w for w in waiters.waiter_names}
        if rest[0] not in by_cli:
            return f"no waiter {rest[0]!r} for {cli_service} (known: {', '.join(sorted(by_cli))})"
        op_name = waiters.get_waiter(by_cli[rest[0]]).operation
        rest = rest[1:]
        paginated = False
    else:
        if operation not in names:
            close = difflib.get_close_matches(operation, list(names), n=3)
            return f"{cli_service} has no operation {operation!r}" + (f" (did you mean {', '.join(close)}?)"
                                                                       if close else "")
        op_name = names[operation]
        paginated = _paginated(session, service, op_name)
    if rest:
        return f"unexpected argument {rest[0]!r} (values follow an --option)"
    shape = model.operation_model(op_name).input_shape
    members = shape.members if shape is not None else {}
    params = {xform_name(m, "-"): m for m in members}
    booleans = {n for n, m in params.items() if members[m].type_name == "boolean"}
    for option in options:
        if option in params or option in AWS_GLOBAL_OPTIONS or (paginated and option in AWS_PAGING_OPTIONS):
            continue
        if option.startswith("no-") and option[3:] in booleans:
            continue
        return f"{cli_service} {operation} has no option --{option}"
    if "region" not in options:
        return "no --region (on-call shells often have none, or the wrong one)"
    if "cli-input-json" not in options:
        required = shape.required_members if shape is not None else []
        given = {o.removeprefix("no-") for o in options}
        missing = [f"--{xform_name(r, '-')}" for r in required if xform_name(r, "-") not in given]
        if missing:
            return f"{cli_service} {operation} requires {', '.join(missing)}"
    return ""


def _paginated(session: Any, service: str, operation: str) -> bool:
    from botocore.exceptions import DataNotFoundError

    try:
        session.get_paginator_model(service).get_paginator(operation)
    except (DataNotFoundError, ValueError):
        return False
    return True


def _aws_options(args: list[str]) -> tuple[set[str], list[str]]:
    """The `--option` names given (without dashes) and the arguments that are not option values."""
    options: set[str] = set()
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, _, _value = arg[2:].partition("=")
            options.add(name)
            # Values run until the next --option (list parameters take several).
            i += 1
            while "=" not in arg and i < len(args) and not args[i].startswith("--"):
                i += 1
            continue
        rest.append(arg)
        i += 1
    return options, rest


def check_aws_command(command: Command) -> str:
    problem = check_aws(command.text)
    return f"{command.where}: `{command.text}`: {problem}" if problem else ""
