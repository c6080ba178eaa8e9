"""BUILD is a dependency description that nothing builds (see README, "BUILD"); these tests hold it to the tree.

BUILD is read with `ast` (Starlark is a subset of Python syntax) and evaluated here: string lists, `+`, `glob([...],
exclude=[...])` against the checkout, `requirement("dist")`. Comprehensions, variables and macros are refused, so that
what this file checks is exactly what BUILD says. The checks:

- every .py file under models/, components/, pipeline/, bench/, tests/ and every file under schemas/ is in the srcs of
  exactly one target, and every srcs entry exists;
- every tests/test_*.py has its own py_test target (same name, that file as its only src), and reaches the conftest;
- every third-party import in a target's sources (module-level or inside functions) is covered by a
  `requirement(...)` in that target's own deps;
- every first-party import (models, components, pipeline, bench, tests) resolves to a file held by the target
  itself or by a target it depends on, directly or transitively;
- every requirement is pinned in constraints.txt; every ":label" names a target; the target graph is acyclic.

Nothing here imports project code or touches the network; the import-name -> distribution map falls back on the
environment's installed metadata (importlib.metadata) for names not listed in IMPORT_TO_DIST.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "BUILD"
FIRST_PARTY = ("models", "components", "pipeline", "bench", "tests")
PY_DIRS = FIRST_PARTY  # every .py file under these is in one target
DATA_DIRS = ("schemas",)  # every file under these is in one target
RULES = ("py_library", "py_test", "filegroup")

# import name (dotted prefix, longest match wins) -> distribution, for names whose distribution is not obvious or is
# ambiguous in the installed metadata (`google` is shared by ~30 distributions).
IMPORT_TO_DIST = {
    "absl": "absl-py",
    "apache_beam": "apache-beam",
    "google.protobuf": "protobuf",
    "jax": "jax",
    "keras": "keras",
    "kfp": "kfp",
    "matplotlib": "matplotlib",
    "ml_metadata": "ml-metadata",
    "numpy": "numpy",
    "pandas": "pandas",
    "PIL": "pillow",
    "pytest": "pytest",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "tensorflow": "tensorflow",
    "tensorflow_data_validation": "tensorflow-data-validation",
    "tensorflow_datasets": "tensorflow-datasets",
    "tensorflow_metadata": "tensorflow-metadata",
    "tensorflow_model_analysis": "tensorflow-model-analysis",
    "tensorflow_transform": "tensorflow-transform",
    "tfx": "tfx",
    "tfx_bsl": "tfx-bsl",
}


def normalize(dist: str) -> str:
    """PEP 503 name normalization (constraints.txt spells some names with underscores)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


# --------------------------------------------------------------------------------------------- reading BUILD


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Requirement:
    dist: str


@dataclass
class Target:
    kind: str
    name: str
    lineno: int
    srcs: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # ":name" entries of deps
    requirements: list[str] = field(default_factory=list)  # requirement("...") entries of deps, as written
    data: list[str] = field(default_factory=list)
    empty_globs: list[str] = field(default_factory=list)


def _glob(include: list[str], exclude: list[str]) -> tuple[list[str], list[str]]:
    """Bazel glob on the root package: files only, `**` = zero or more directories. Returns (matches, empty patterns)."""

    def expand(patterns):
        out, empty = set(), []
        for pattern in patterns:
            hits = {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
            out |= hits
            if not hits:
                empty.append(pattern)
        return out, empty

    inc, empty = expand(include)
    exc, _ = expand(exclude)
    return sorted(inc - exc), empty


def _eval(node: ast.AST, empty_globs: list[str]):
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bool | int):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, empty_globs) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _eval(node.left, empty_globs) + _eval(node.right, empty_globs)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_eval(a, empty_globs) for a in node.args]
        kwargs = {k.arg: _eval(k.value, empty_globs) for k in node.keywords}
        if node.func.id == "glob":
            matches, empty = _glob(args[0] if args else kwargs["include"], kwargs.get("exclude", []))
            empty_globs.extend(empty)
            return matches
        if node.func.id == "requirement" and len(args) == 1 and isinstance(args[0], str):
            return Requirement(args[0])
    raise BuildError(f"BUILD:{node.lineno}: unsupported {ast.unparse(node)!r} (BUILD may use lists, +, glob, requirement)")


@functools.cache
def read_build() -> dict[str, Target]:
    tree = ast.parse(BUILD.read_text(), filename="BUILD")
    targets: dict[str, Target] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Name)):
            raise BuildError(f"BUILD:{stmt.lineno}: only rule calls are supported, got {ast.unparse(stmt)[:80]!r}")
        call, kind = stmt.value, stmt.value.func.id
        if kind in ("load", "package"):
            continue
        if kind not in RULES:
            raise BuildError(f"BUILD:{stmt.lineno}: unknown rule {kind!r} (known: {', '.join(RULES)})")
        if call.args:
            raise BuildError(f"BUILD:{stmt.lineno}: {kind} takes keyword arguments only")
        empty: list[str] = []
        attrs = {k.arg: _eval(k.value, empty) for k in call.keywords}
        target = Target(kind=kind, name=attrs["name"], lineno=stmt.lineno, empty_globs=empty)
        target.srcs = list(attrs.get("srcs", []))
        target.data = list(attrs.get("data", []))
        for dep in attrs.get("deps", []):
            if isinstance(dep, Requirement):
                target.requirements.append(dep.dist)
            elif isinstance(dep, str) and dep.startswith(":"):
                target.labels.append(dep)
            else:
                raise BuildError(f"BUILD:{stmt.lineno}: {target.name!r}: dep {dep!r} is neither ':label' nor requirement()")
        if target.name in targets:
            raise BuildError(f"BUILD:{stmt.lineno}: target {target.name!r} defined twice")
        targets[target.name] = target
    return targets


# --------------------------------------------------------------------------------------------- reading the sources


def tree_files() -> list[str]:
    paths = [p for folder in PY_DIRS for p in (ROOT / folder).rglob("*.py")]
    paths += [p for folder in DATA_DIRS for p in (ROOT / folder).rglob("*") if p.is_file()]
    return sorted(p.relative_to(ROOT).as_posix() for p in paths if "__pycache__" not in p.parts)


def module_file(module: str) -> str | None:
    """The file of a dotted first-party module (a .py file or a package's __init__.py), or None."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    if base.is_dir():  # namespace package (bench/ has no __init__.py)
        return base.relative_to(ROOT).as_posix() + "/"
    return None


def _package_of(src: str) -> list[str]:
    parts = src[: -len(".py")].split("/")
    return parts[:-1]  # for a/b/__init__.py too: the package a.b is parts[:-1] == ["a", "b"]


def imports_of(src: str) -> list[tuple[int, str]]:
    """(line, absolute dotted module) for every import in the file, at any depth. `from P import n` gives P.n when
    that is a first-party module, else P; relative imports are resolved against the file's package."""
    tree = ast.parse((ROOT / src).read_text(), filename=src)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(src)
                base_parts = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] in FIRST_PARTY:
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.append((node.lineno, sub if module_file(sub) and not module_file(sub).endswith("/") else base))
            else:
                out.append((node.lineno, base))
    return list(dict.fromkeys(out))  # `from m import a, b` is one import of m


@functools.cache
def _installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> list[str] | None:
    """Normalized distribution names that may provide `module` (any one of them is enough), or None if unknown."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in IMPORT_TO_DIST:
            return [normalize(IMPORT_TO_DIST[prefix])]
    found = _installed_distributions().get(parts[0])
    return sorted({normalize(d) for d in found}) if found else None


def is_third_party(module: str) -> bool:
    top = module.split(".")[0]
    return bool(top) and top not in sys.stdlib_module_names and top not in FIRST_PARTY


def holder_of() -> dict[str, str]:
    """src file -> name of the (first) target holding it."""
    holders: dict[str, str] = {}
    for target in read_build().values():
        for src in target.srcs:
            holders.setdefault(src, target.name)
    return holders


def closure(name: str) -> set[str]:
    targets, seen, todo = read_build(), set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in targets:
            continue
        seen.add(current)
        todo += [label[1:] for label in targets[current].labels]
    return seen


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name.split("[")[0])] = version.strip()
    return pins


# --------------------------------------------------------------------------------------------- the tests


def test_build_parses_and_every_glob_matches():
    targets = read_build()
    assert targets, "BUILD defines no target"
    empty = [f"{t.name}: {pattern}" for t in targets.values() for pattern in t.empty_globs]
    assert not empty, "glob patterns in BUILD that match no file:\n  " + "\n  ".join(empty)


def test_every_file_is_in_exactly_one_target():
    owners: dict[str, list[str]] = {}
    for target in read_build().values():
        for src in target.srcs:
            owners.setdefault(src, []).append(target.name)
    files = tree_files()
    missing = [f for f in files if f not in owners]
    several = [f"{f}: {', '.join(owners[f])}" for f in files if len(owners.get(f, [])) > 1]
    stale = [f"{f} ({', '.join(owners[f])})" for f in sorted(owners) if not (ROOT / f).is_file()]
    assert not missing, "files in no BUILD target's srcs:\n  " + "\n  ".join(missing)
    assert not several, "files in the srcs of more than one target:\n  " + "\n  ".join(several)
    assert not stale, "srcs in BUILD that are no file of the tree:\n  " + "\n  ".join(stale)


def test_every_test_file_has_its_own_py_test():
    targets = read_build()
    conftest_holder = holder_of().get("tests/conftest.py")
    problems = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        src = path.relative_to(ROOT).as_posix()
        target = targets.get(path.stem)
        if target is None or target.kind != "py_test":
            problems.append(f"{src}: no py_test named {path.stem!r}")
        elif target.srcs != [src]:
            problems.append(f"{src}: py_test {path.stem!r} has srcs {target.srcs}, expected [{src!r}]")
        elif conftest_holder not in closure(target.name):
            problems.append(f"{src}: py_test {path.stem!r} does not depend on :{conftest_holder} (tests/conftest.py)")
    for target in targets.values():
        if target.kind == "py_test" and not (target.srcs == [f"tests/{target.name}.py"]):
            problems.append(f"py_test {target.name!r} (BUILD:{target.lineno}) does not hold exactly tests/{target.name}.py")
    assert not problems, "py_test targets out of step with tests/:\n  " + "\n  ".join(problems)


def test_labels_resolve_and_target_graph_is_acyclic():
    targets = read_build()
    unknown = [f"{t.name}: {label}" for t in targets.values() for label in t.labels if label[1:] not in targets]
    assert not unknown, "deps naming no target of BUILD:\n  " + "\n  ".join(unknown)
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(name, path):
        state[name] = 1
        for label in targets[name].labels:
            dep = label[1:]
            if state.get(dep) == 1:
                raise AssertionError("dependency cycle in BUILD: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in targets:
        if name not in state:
            visit(name, [name])


def test_third_party_imports_are_declared_requirements():
    problems, unknown = [], []
    for target in read_build().values():
        declared = {normalize(r) for r in target.requirements}
        for src in target.srcs:
            if not src.endswith(".py"):
                continue
            for lineno, module in imports_of(src):
                if not is_third_party(module):
                    continue
                dists = distribution_of(module)
                if dists is None:
                    unknown.append(f"{src}:{lineno}: import {module} (target {target.name})")
                elif not declared.intersection(dists):
                    problems.append(f"{src}:{lineno}: import {module} needs requirement({dists[0]!r}) in :{target.name}")
    assert not unknown, (
        "imports of no installed distribution (add them to IMPORT_TO_DIST in this file):\n  " + "\n  ".join(unknown)
    )
    assert not problems, "third-party imports not covered by the target's deps:\n  " + "\n  ".join(sorted(set(problems)))


def test_first_party_imports_are_covered_by_deps():
    holders = holder_of()
    problems = []
    for target in read_build().values():
        reach = closure(target.name)
        for src in target.srcs:
            if not src.endswith(".py"):
                continue
            for lineno, module in imports_of(src):
                if module.split(".")[0] not in FIRST_PARTY:
                    continue
                file = module_file(module)
                if file is None:
                    problems.append(f"{src}:{lineno}: import {module}: no such module in the tree")
                    continue
                if file.endswith("/"):  # a namespace package (bench): any target holding a file in it
                    owners = {holders[f] for f in holders if f.startswith(file)}
                else:
                    owners = {holders[file]} if file in holders else set()
                if not owners:
                    problems.append(f"{src}:{lineno}: import {module}: {file} is in no target")
                elif not owners & reach:
                    problems.append(f"{src}:{lineno}: import {module} needs a dep on :{sorted(owners)[0]} in :{target.name}")
    assert not problems, "first-party imports not covered by deps:\n  " + "\n  ".join(problems)


def test_requirements_are_pinned_in_constraints():
    pins = pinned()
    unpinned = sorted(
        {f"{r} (in :{t.name})" for t in read_build().values() for r in t.requirements if normalize(r) not in pins}
    )
    assert not unpinned, "requirement()s of BUILD not pinned (==) in constraints.txt:\n  " + "\n  ".join(unpinned)


@pytest.mark.parametrize("module,expected", [("PIL.Image", ["pillow"]), ("google.protobuf.text_format", ["protobuf"])])
def test_import_map(module, expected):
    assert distribution_of(module) == expected
