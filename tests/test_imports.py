"""The project's modules import one another without a circle.

Every module of har_tf/, pipeline/ and configs/ is parsed (ast, nothing imported)
and each import of a project module, at module level or inside a function, is an
edge from the importing module to the imported one. A circle means some module
is loaded half-initialised, or twice (`python -m pipeline.train` once loaded
train.py a second time through cli -> run), and the usual dodge, an import moved
into a function, hides it from a reader: so the graph counts those too, and an
import inside a function must be on the allowlist below, with its reason.
"""

from __future__ import annotations

import ast
import os

import pytest

from pipeline.core import stage
from tests import harness

PACKAGES = ("har_tf", "pipeline", "configs")

# (importing module, imported module): why the import sits inside a function. The
# source line carries the reason too, as a "# deferred: ..." comment.
DEFERRED = {
    ("pipeline.core.stage", "har_tf"): "importing har_tf imports TensorFlow; stage stays light",
}

# pipeline/'s layers, lowest first: layer -> the layers its modules may import (besides
# its own). "pipeline" is the application layer, the package's own modules (cli,
# config_check and the stages users run); pipeline/__init__.py itself imports nothing
# of pipeline and belongs to no layer. docs/PIPELINE.md has the table; the BUILD files
# give each layer a py_library with the same deps.
LAYERS = {
    "pipeline.core": set(),
    "pipeline.data": {"pipeline.core"},
    "pipeline.data_validation": {"pipeline.core", "pipeline.data"},
    "pipeline.training": {"pipeline.core", "pipeline.data"},
    "pipeline.evaluation": {"pipeline.core", "pipeline.data"},
    "pipeline.serving": {"pipeline.core", "pipeline.data"},
    "pipeline": {
        "pipeline.core",
        "pipeline.data",
        "pipeline.data_validation",
        "pipeline.training",
        "pipeline.evaluation",
        "pipeline.serving",
    },
}
LAYERS["pipeline.study"] = {"pipeline", *LAYERS["pipeline"]}


def layer_of(module: str) -> str | None:
    """The layer of a pipeline module (None for pipeline/__init__.py and other packages)."""
    if module == "pipeline" or not module.startswith("pipeline."):
        return None
    package = ".".join(module.split(".")[:2])
    return package if package in LAYERS else "pipeline"


def upward_imports(edges) -> list[str]:
    """One line per import of a layer that the importer's layer may not import."""
    found = []
    for a, b, line, _ in edges:
        la, lb = layer_of(a), layer_of(b)
        if la is not None and lb is not None and la != lb and lb not in LAYERS[la]:
            found.append(f"{a}:{line} imports {b} ({la} may import only {sorted(LAYERS[la])})")
    return found


def project_modules(root: str = harness.REPO, packages=PACKAGES) -> dict[str, str]:
    """Dotted module name -> file path, for every .py file under `packages`."""
    out = {}
    for package in packages:
        for dirpath, _, files in os.walk(os.path.join(root, package)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    name = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                    out[name.removesuffix(".__init__")] = path
    return out


def _resolve(name: str, modules: dict) -> str | None:
    """The project module that importing `name` runs: itself, or the package whose
    attribute it is (`from har_tf import HARModel` -> har_tf)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, bool]:
    """Each import node -> whether it sits inside a function (or a class body)."""
    inside: dict[ast.AST, bool] = {}

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                inside[child] = in_function
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or nested)

    visit(tree, False)
    return inside


def imports(modules: dict) -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every project import."""
    edges = []
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        for node, in_function in _enclosing_functions(tree).items():
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, `level` up
                    parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    base = ".".join([*parts, base] if base else parts)
                names = [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    edges.append((module, target, node.lineno, in_function))
    return edges


def find_cycles(edges) -> list[list[str]]:
    """One circle of imports (a, b, ..., a) per strongly connected set of modules."""
    graph: dict[str, set[str]] = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    # Tarjan's algorithm, iteratively (no recursion limit to meet).
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        u = stack.pop()
                        on_stack.discard(u)
                        scc.append(u)
                        if u == v:
                            break
                    if len(scc) > 1:
                        sccs.append(sorted(scc))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return [_cycle_in(scc, graph) for scc in sccs]


def _cycle_in(scc: list[str], graph) -> list[str]:
    """A shortest circle through the first module of a strongly connected set."""
    members, start = set(scc), scc[0]
    paths, frontier = {start: [start]}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")  # an SCC always has one


def registry_imports(modules: dict) -> list[tuple[str, str, int, bool]]:
    """The edges the parser cannot see: pipeline.run binds each stage's `run` through
    importlib (run.STAGE_RUNS, from the stage registry), so pipeline.run imports
    every stage module the registry names."""
    missing = [s.module for s in stage.REGISTRY if s.module not in modules]
    assert not missing, f"the stage registry names modules that do not exist: {missing}"
    return [("pipeline.run", s.module, 0, False) for s in stage.REGISTRY]


@pytest.fixture(scope="module")
def project():
    modules = project_modules()
    return modules, imports(modules) + registry_imports(modules)


def test_no_import_cycles(project):
    _, edges = project
    cycles = find_cycles(edges)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_deferred_on_purpose(project):
    modules, edges = project
    deferred = {(a, b): line for a, b, line, in_function in edges if in_function}
    unexplained = sorted(set(deferred) - set(DEFERRED))
    assert not unexplained, (
        "imports inside functions (move them to the top; if one must stay, add it to "
        "DEFERRED with its reason): "
        + ", ".join(f"{a}:{deferred[a, b]} imports {b}" for a, b in unexplained)
    )
    stale = sorted(set(DEFERRED) - set(deferred))
    assert not stale, f"DEFERRED lists imports no longer inside a function: {stale}"
    for a, b in DEFERRED:
        with open(modules[a]) as f:
            line = f.read().splitlines()[deferred[a, b] - 1]
        assert "# deferred:" in line, f"{a}:{deferred[a, b]}: say why with '# deferred: ...'"


def test_every_pipeline_module_is_in_a_layer_and_imports_only_lower_ones(project):
    modules, edges = project
    # Each sub-package of pipeline/ is a layer (a new one must be added to LAYERS).
    packages = {".".join(m.split(".")[:2]) for m in modules if m.count(".") >= 2}
    unlayered = sorted(p for p in packages if p.startswith("pipeline.") and p not in LAYERS)
    assert not unlayered, f"pipeline sub-packages missing from LAYERS: {unlayered}"
    upward = upward_imports(edges)
    assert not upward, "imports across the layers upward or sideways:\n" + "\n".join(upward)


def test_the_layer_check_finds_an_upward_and_a_sideways_import():
    edges = [
        ("pipeline.core.stage", "pipeline.data.records", 3, False),  # up
        ("pipeline.training.modeling", "pipeline.serving.signature", 4, True),  # sideways
        ("pipeline.serving.http_server", "pipeline.train", 5, False),  # up to the stages
        ("pipeline.data.records", "pipeline.core.stage", 6, False),  # down: allowed
        ("pipeline.study.runner", "pipeline.train", 7, False),  # down: allowed
        ("pipeline.train", "pipeline.cli", 8, False),  # within a layer
        ("pipeline.core.stage", "har_tf", 9, True),  # outside pipeline
    ]
    found = upward_imports(edges)
    assert [line.split(" ")[0] for line in found] == [
        "pipeline.core.stage:3",
        "pipeline.training.modeling:4",
        "pipeline.serving.http_server:5",
    ]
    assert layer_of("pipeline.cli") == "pipeline" and layer_of("pipeline") is None
    assert layer_of("pipeline.data.sources.idx") == "pipeline.data"


def test_the_checks_find_a_circle_and_an_import_in_a_function(tmp_path):
    # A tiny project, built here: p.a imports p.b at the top, p.b imports p.c in a
    # function, p.c imports p.a (`from . import a`); p.d imports p.c and is no part
    # of the circle.
    package = tmp_path / "p"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from p import b\n")
    (package / "b.py").write_text("def f():\n    import p.c\n")
    (package / "c.py").write_text("from . import a\n")
    (package / "d.py").write_text("from p.c import x\n")
    modules = project_modules(str(tmp_path), ("p",))
    edges = imports(modules)
    assert sorted((a, b, f) for a, b, _, f in edges) == [
        ("p.a", "p.b", False),
        ("p.b", "p.c", True),
        ("p.c", "p.a", False),
        ("p.d", "p.c", False),
    ]
    assert find_cycles(edges) == [["p.a", "p.b", "p.c", "p.a"]]
    (package / "c.py").write_text("")
    assert find_cycles(imports(modules)) == []
