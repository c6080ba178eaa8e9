"""Layering rules of models/, components/ and pipeline/, read from the sources with `ast` (no project code is imported).

- models/ never imports tfx;
- components/ never imports pipeline;
- the imports between models.* modules (module-level and inside functions) form no cycle;
- no models/ module imports a models.* module inside a function or class body (that only hides a cycle);
- models/config.py (once it exists) pulls in neither keras, tensorflow nor jax, itself or through the models.*
  modules it imports (and the packages above them, whose __init__ runs first).
- the run report (pipeline/report*.py, pipeline/regression_report.py) loads neither tensorflow, tfx nor keras: the
  one rule that runs project code, importing those modules in a fresh interpreter; pipeline/report.py stays under
  250 lines (its blocks, envelope, text and figures live in the report_* modules beside it).

Edges: `import models.a.b` and `from models.a.b import X` -> models.a.b; `from models import a, b` -> models.a, models.b
(-> models when a name is no module); relative imports are resolved against the file's package. Imports under
`if TYPE_CHECKING:` never run, so the cycle and config rules leave them out; the tfx and pipeline rules do not.

As a command, `python tests/test_layout.py` prints the cycles of the models/ import graph (or "no import cycle in
models/") and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("keras", "tensorflow", "jax")


@dataclass(frozen=True)
class Import:
    src: str  # path relative to ROOT
    lineno: int
    module: str  # absolute dotted name of what is imported (see module docstring)
    local: bool  # inside a def / class body
    type_checking: bool  # under `if TYPE_CHECKING:`


def py_files(folder: str) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(src: str) -> str:
    parts = src[: -len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(src: str) -> list[Import]:
    tree = ast.parse((ROOT / src).read_text(), filename=src)
    package = module_name(src).split(".")
    if not src.endswith("__init__.py"):
        package = package[:-1]
    out: list[Import] = []

    def add(node, module, local, type_checking):
        out.append(Import(src, node.lineno, module, local, type_checking))

    def visit(node: ast.AST, local: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(child, alias.name, local, type_checking)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base_parts = package[: len(package) - (child.level - 1)]
                    base = ".".join(base_parts + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    add(child, sub if alias.name != "*" and is_module(sub) else base, local, type_checking)
            else:
                visit(
                    child,
                    local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda),
                    type_checking or (isinstance(child, ast.If) and _is_type_checking(child.test)),
                )

    visit(tree, False, False)
    return list(dict.fromkeys(out))  # `from m import a, b` is one import of m


def _imports_in(folder: str) -> list[Import]:
    return [imp for src in py_files(folder) for imp in imports_of(src)]


def _top(module: str) -> str:
    return module.split(".")[0]


def models_graph() -> dict[str, list[Import]]:
    """models.* module -> its imports of models.* modules that run (not TYPE_CHECKING-only), module- or function-level."""
    graph: dict[str, list[Import]] = {}
    for src in py_files("models"):
        graph[module_name(src)] = [
            imp for imp in imports_of(src) if _top(imp.module) == "models" and not imp.type_checking
        ]
    return graph


def find_cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """Cycles (each the list of its edges) of the strongly connected components (Tarjan), enough to show every edge of
    a component on one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for imp in graph.get(v, []):
            w = imp.module
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles: list[list[Import]] = []
    for component in components:
        members = set(component)
        inner = sorted((imp for v in component for imp in graph[v] if imp.module in members), key=lambda i: (i.src, i.lineno))
        covered: set[Import] = set()
        for edge in inner:  # a shortest cycle through each edge of the component not yet on a printed cycle
            if edge in covered:
                continue
            cycle = [edge, *_shortest_path(graph, members, edge.module, module_name(edge.src))]
            covered.update(cycle)
            cycles.append(cycle)
    return cycles


def _shortest_path(graph: dict[str, list[Import]], members: set[str], source: str, target: str) -> list[Import]:
    """The edges of a shortest path source -> target inside `members` (empty when source == target)."""
    parent: dict[str, Import] = {}
    frontier, seen = [source], {source}
    while frontier and target not in seen:
        nxt = []
        for v in frontier:
            for imp in sorted(graph[v], key=lambda i: (i.module, i.lineno)):
                if imp.module in members and imp.module not in seen:
                    seen.add(imp.module)
                    parent[imp.module] = imp
                    nxt.append(imp.module)
        frontier = nxt
    path, node = [], target
    while node != source:
        path.append(parent[node])
        node = module_name(parent[node].src)
    return list(reversed(path))


def format_cycle(edges: list[Import]) -> str:
    lines = [module_name(edges[0].src)]
    for imp in edges:
        where = f"{imp.src}:{imp.lineno}{', inside a function' if imp.local else ''}"
        lines.append(f"  -> {imp.module}  ({where})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the rules


def test_models_never_import_tfx():
    offenders = [f"{i.src}:{i.lineno}: {i.module}" for i in _imports_in("models") if _top(i.module) == "tfx"]
    assert not offenders, "models/ must not import tfx:\n  " + "\n  ".join(offenders)


def test_components_never_import_pipeline():
    offenders = [f"{i.src}:{i.lineno}: {i.module}" for i in _imports_in("components") if _top(i.module) == "pipeline"]
    assert not offenders, "components/ must not import pipeline/:\n  " + "\n  ".join(offenders)


def test_no_import_cycle_in_models():
    cycles = find_cycles(models_graph())
    if cycles:
        pytest.fail("import cycles among models/ modules:\n" + "\n".join(format_cycle(c) for c in cycles), pytrace=False)


def test_no_function_local_models_imports_in_models():
    offenders = [f"{i.src}:{i.lineno}: {i.module}" for i in _imports_in("models") if i.local and _top(i.module) == "models"]
    assert not offenders, "models.* imported inside a function or class body in models/ (import at module level):\n  " + (
        "\n  ".join(offenders)
    )


def test_config_imports_no_backend():
    if not (ROOT / "models" / "config.py").is_file():
        pytest.skip("models/config.py does not exist yet")
    graph = models_graph()
    # breadth-first from models.config; the packages above a module (their __init__) are imported before it
    via: dict[str, str | None] = {"models.config": None}
    todo = ["models.config"]
    while todo:
        module = todo.pop(0)
        parts = module.split(".")
        nexts = [imp.module for imp in graph.get(module, [])] + [".".join(parts[:n]) for n in range(1, len(parts))]
        for nxt in nexts:
            if nxt in graph and nxt not in via:
                via[nxt] = module
                todo.append(nxt)
    offenders = []
    for module in via:
        src = next(s for s in py_files("models") if module_name(s) == module)
        for imp in {_top(i.module): i for i in reversed(imports_of(src))}.values():  # the first import of each
            if _top(imp.module) in BACKENDS and not imp.type_checking:
                chain, node = [], module
                while node is not None:
                    chain.append(node)
                    node = via[node]
                offenders.append(f"{' -> '.join(reversed(chain))} imports {imp.module} ({imp.src}:{imp.lineno})")
    assert not offenders, "models/config.py must not pull in keras, tensorflow or jax:\n  " + "\n  ".join(offenders)


def report_modules() -> list[str]:
    return [module_name(src) for src in py_files("pipeline")
            if src.startswith("pipeline/report") or src == "pipeline/regression_report.py"]


def test_report_imports_no_tensorflow_or_tfx():
    """In a fresh interpreter (this one may have loaded them already): the report's modules load none of them."""
    modules = report_modules()
    assert {"pipeline.report", "pipeline.regression_report", "pipeline.report_blocks", "pipeline.report_render"} <= set(
        modules
    ), modules
    loaded = "sorted(m for m in ('tensorflow', 'tfx', 'keras') if m in sys.modules)"
    code = f"import sys\nimport {', '.join(modules)}\nprint({loaded})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"importing {modules} loads {proc.stdout.strip()}"


def test_report_module_under_250_lines():
    lines = len((ROOT / "pipeline" / "report.py").read_text().splitlines())
    assert lines < 250, f"pipeline/report.py has {lines} lines (under 250: split it into the report_* modules)"


def main() -> int:
    cycles = find_cycles(models_graph())
    if not cycles:
        print("no import cycle in models/")
        return 0
    print(f"{len(cycles)} import cycle(s) in models/:")
    for cycle in cycles:
        print(format_cycle(cycle))
    return 1


if __name__ == "__main__":
    sys.exit(main())
