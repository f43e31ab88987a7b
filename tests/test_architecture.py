"""The package's shape: no import cycle anywhere, and nothing outside bpsync/cli/ imports it.

Imports are read with `ast` from the source, including those inside functions (lazy imports
hide a cycle at run time, not from a reader) and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bpsync"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The bpsync modules `name` imports (`from bpsync import x` counts module x when it is
    one, else the package)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(_closest(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else _closest(base, known))
    found.discard("")
    found.discard(name)
    return found


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".")
    if not is_package:
        parts.pop()
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


def _closest(dotted: str, known: set[str]) -> str:
    """The longest known module that `dotted` is or lies in; "" when outside bpsync."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return ""


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), as sorted lists."""
    edges = graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    # bpsync.cli.core imports the planner only inside a function.
    assert "bpsync.planner" in graph["bpsync.cli.core"]
    assert "bpsync.cli.parser" in graph["bpsync.cli"]


def test_find_cycles_reports_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    # A package whose __init__ imports a submodule that imports the package back.
    assert find_cycles({"p": {"p.x"}, "p.x": {"p"}}) == [["p", "p.x"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# `python -m bpsync` and the `bpsync` script both run bpsync/__main__.py (which catches an
# interrupt during start-up): only it imports the CLI from outside.
ENTRY_POINTS = {"bpsync.__main__"}


def test_nothing_outside_the_cli_imports_it() -> None:
    upward = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not (name == "bpsync.cli" or name.startswith("bpsync.cli.") or name in ENTRY_POINTS)
        for target in targets
        if target == "bpsync.cli" or target.startswith("bpsync.cli.")
    )
    assert not upward, "; ".join(upward)
