"""Imports inside rifscale only go down: no module imports (even inside a function) a
module that imports it back, directly or through others; each stage (package) imports only
the stages below it (LAYERS); the run format never imports the pipeline or the jobs that
call it."""

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
    graph["rifscale.runs.format"] = graph["rifscale.runs.format"] | {"rifscale.jobs"}  # the run format calling its job
    assert any({"rifscale.jobs", "rifscale.runs.format"} <= set(c) for c in cycles(graph))


def test_the_run_format_never_imports_the_pipeline_or_the_jobs():
    assert not import_graph()["rifscale.runs.format"] & {"rifscale.pipeline", "rifscale.jobs"}


#: The stages from the top of the data flow to the bottom. A module may import modules of
#: its own package or of any stage *below* its own, never one above or beside it.
LAYERS = (
    ("cli",),
    ("commands",),
    ("demo",),
    ("audits",),
    ("jobs",),
    ("session",),
    ("validation",),
    ("pipeline", "plots"),
    ("runs",),
    ("estimates",),
    ("engine",),
    ("corpus",),
    ("outputs", "progress", "testing"),
    ("cluster",),
    ("tls", "config", "_namespace"),
    ("errors",),
)
RANK = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, d) for m, deps in graph.items() for d in deps
                  if _unit(m) != _unit(d) and RANK[_unit(d)] <= RANK[_unit(m)])


def test_every_module_belongs_to_a_stage():
    assert {_unit(m) for m in import_graph()} <= set(RANK)


def test_stages_only_import_stages_below_them():
    assert upward_imports(import_graph()) == []


def test_an_upward_import_is_found():
    graph = import_graph()
    graph["rifscale.engine.fit"] = graph["rifscale.engine.fit"] | {"rifscale.estimates.groups"}
    assert upward_imports(graph) == [("rifscale.engine.fit", "rifscale.estimates.groups")]


def unresolved_imports() -> list[tuple[str, str]]:
    """(module, target) for every ``from X import ...`` inside rifscale whose X is no module
    of the package (an import left behind by a move would otherwise fail only when run)."""
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    missing = []
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rifscale")):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                if target not in modules:
                    missing.append((name, target))
    return missing


def test_every_import_names_a_module_of_the_package():
    assert unresolved_imports() == []


def test_every_lazy_public_name_resolves_where_the_package_says():
    """``rifscale.X`` is imported on first use from the module ``_LAZY`` names: a module moved
    without its entry would fail only when a user touches the name."""
    import importlib

    import rifscale

    for name, (module, attr) in rifscale._LAZY.items():
        assert hasattr(importlib.import_module(f"rifscale.{module}"), attr), name
    assert set(rifscale._LAZY) <= set(rifscale.__all__)
