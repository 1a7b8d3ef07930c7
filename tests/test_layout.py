"""Imports inside rifscale only go down: no module imports (even inside a function) a
module that imports it back, directly or through others. The run format never imports the
pipeline or the jobs that call it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rifscale"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> rifscale modules it imports anywhere in its text (the package's own
    ``__init__``, which only re-exports, is left out)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                found |= {target, *(f"{target}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = found
    modules = set(graph) - {"rifscale"}
    return {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items() if m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_circle():
    graph = import_graph()
    graph["rifscale.rundir"] = graph["rifscale.rundir"] | {"rifscale.jobs"}  # the run format calling its job
    assert any({"rifscale.jobs", "rifscale.rundir"} <= set(c) for c in cycles(graph))


def test_the_run_format_never_imports_the_pipeline_or_the_jobs():
    assert not import_graph()["rifscale.rundir"] & {"rifscale.pipeline", "rifscale.jobs"}
