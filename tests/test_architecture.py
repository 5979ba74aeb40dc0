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


def test_the_harness_core_never_imports_the_studies():
    """Studies (bench/studies/) run the harness; the harness never reaches up into them. The
    one exception is bench.report, the front door of the report's figure registry."""
    bad = {
        m: sorted(d for d in deps if d.startswith("bench.studies"))
        for m, deps in _imports().items()
        if m.startswith("bench") and not m.startswith("bench.studies") and m != "bench.report"
    }
    assert {m: d for m, d in bad.items() if d} == {}


# Size limits of the code (docs/design.md, "Small pieces"): a file, a function's code (its
# docstring, the contract, not counted) and its parameters (self / cls not counted).
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
# The deliberate exceptions, each with its reason. The solvers' public functions take their
# grid and order options as keyword-only arguments with defaults, the API of the solver
# libraries they are checked against (diffusers, k-diffusion, the DPM-Solver and UniPC code);
# `samplers.sample(name, ..., **options)` is how the suite calls them.
PARAMETER_EXCEPTIONS = {
    "samplers/ddim.py": {"ddpm", "ddim"},
    "samplers/dpm.py": {
        "_singlestep",
        "_multistep",
        "dpm_solver",
        "dpm_solver_pp_singlestep",
        "dpm_solver_pp",
        "dpm_solver_multistep",
        "dpm_solver_pp_sde",
    },
    "samplers/sde.py": {"euler_maruyama"},
    "samplers/unipc.py": {"unipc"},
}


def _functions():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT).as_posix(), node


def _code_lines(node) -> int:
    """Lines from ``def`` to the function's end, its docstring left out."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        n -= first.end_lineno - first.lineno + 1
    return n


def test_no_source_file_is_over_the_size_limit():
    long = {
        path.relative_to(ROOT).as_posix(): n
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_over_the_length_limit():
    long = {
        f"{path}:{node.name}": n
        for path, node in _functions()
        if (n := _code_lines(node)) > MAX_FUNCTION_LINES
    }
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code: {long}"


def test_no_function_takes_more_than_eight_parameters():
    many = {}
    for path, node in _functions():
        a = node.args
        names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
        n = len([x for x in names if x not in ("self", "cls")])
        if n > MAX_PARAMETERS and node.name not in PARAMETER_EXCEPTIONS.get(path, ()):
            many[f"{path}:{node.name}"] = n
    assert not many, f"functions over {MAX_PARAMETERS} parameters: {many}"
