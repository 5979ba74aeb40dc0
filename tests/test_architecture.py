"""The import rules of docs/design.md ("Layers"), checked on the source: the library packages
never import the harness, and no two modules import each other (directly or around a longer
loop)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adaptive", "bench", "blockloop", "caching", "models", "pruning", "samplers")
LIBRARIES = ("adaptive", "blockloop", "caching", "models", "pruning", "samplers")  # not bench


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> project modules it imports (at any depth of the file, lazy imports and imports
    under ``if TYPE_CHECKING:`` included: a type-only circle is still a circle to a reader)."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def test_library_packages_never_import_the_harness():
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] == "bench")
        for m, deps in _imports().items()
        if m.split(".")[0] in LIBRARIES
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_no_import_cycles_between_modules():
    graph = _imports()
    # A package's __init__ re-exporting its own modules is not a cycle of responsibilities.
    for m in graph:
        graph[m] = {d for d in graph[m] if not (m in PACKAGES and d.startswith(m + "."))}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_packages_form_layers():
    """Collapsed to packages, imports only point down: samplers and models at the bottom, the
    block loop (blockloop) above them, caches and exits (caching, adaptive) and pruning above
    it, bench on top."""
    pkg_graph: dict[str, set[str]] = {}
    for m, deps in _imports().items():
        top = m.split(".")[0]
        pkg_graph.setdefault(top, set()).update(d.split(".")[0] for d in deps)
    for top in pkg_graph:
        pkg_graph[top].discard(top)
    assert pkg_graph["bench"] >= {"adaptive", "caching", "models", "pruning", "samplers"}
    order = ["samplers", "models", "blockloop", "caching", "adaptive", "pruning", "bench"]
    for pkg, deps in pkg_graph.items():
        assert all(order.index(d) < order.index(pkg) for d in deps), (pkg, deps)
