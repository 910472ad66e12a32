"""No import cycle among first-party modules (ops/, stacks/, cli/, main.py, tasks.py).

Every import counts, also those inside functions: a lazy import only hides a cycle from the
interpreter, not from the next engineer who has to change both modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import PROJECT_ROOT, parse_python

PACKAGES = ("ops", "stacks", "cli")
SCRIPTS = ("main.py", "tasks.py")


def module_files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for script in SCRIPTS:
        if (root / script).is_file():
            found[script.removesuffix(".py")] = root / script
    return found


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """First-party modules that `name` imports anywhere in its body."""
    modules = set(known)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(parse_python(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from ops import aws` imports the module ops.aws; `from ops.aws import client` imports ops.aws.
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, files) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_first_party_modules() -> None:
    edges = graph(PROJECT_ROOT)
    assert len(edges) > 40, f"found only {len(edges)} modules: the scan is broken"
    found = cycles(edges)
    detail = "\n".join(" <-> ".join(c) + "\n    " + "; ".join(f"{m} imports {sorted(edges[m] & set(c))}" for m in c)
                       for c in found)
    assert not found, f"import cycles:\n{detail}"


def test_the_scan_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden in a function body, and one through a relative import."""
    pkg = tmp_path / "ops"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from ops import b\n")
    (pkg / "b.py").write_text("def f():\n    from ops.a import thing\n")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("from .c import x\n")
    (pkg / "e.py").write_text("import ops.a\n")
    found = cycles(graph(tmp_path))
    assert found == [["ops.a", "ops.b"], ["ops.sub.c", "ops.sub.d"]]
