"""The package's shape: an acyclic import graph (imports inside functions included), a library that never imports
its command line, and source files a reader can take in (no file over 700 lines)."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "spikedriven"
PKG = "spikedriven"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(target: str) -> str | None:
    """The package module an import names (longest known prefix), or None for third-party modules."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        is_pkg = path.name == "__init__.py"
        base = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == PKG]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    mod = f"{anchor}.{node.module}" if node.module else anchor
                elif node.module and node.module.split(".")[0] == PKG:
                    mod = node.module
                else:
                    continue
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
            for t in targets:
                r = _resolve(t)
                if r and r != name:
                    edges.add(r)
        graph[name] = edges
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 80  # the parser sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_library_never_imports_the_command_line():
    graph = import_graph()
    offenders = {m: sorted(e for e in edges if e == f"{PKG}.cli" or e.startswith(f"{PKG}.cli."))
                 for m, edges in graph.items()
                 if not (m == f"{PKG}.cli" or m.startswith(f"{PKG}.cli.") or m == f"{PKG}.__main__")}
    assert {m: e for m, e in offenders.items() if e} == {}


@pytest.mark.parametrize("path", sorted([*SRC.rglob("*.py"), *SRC.rglob("*.cpp")]), ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_over_700_lines(path):
    assert len(path.read_text().splitlines()) <= 700
