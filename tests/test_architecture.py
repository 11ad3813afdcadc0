"""The shape of src/imagerec, checked by reading its source (ast): import cycles, private names, sizes.

Every import counts, the lazy ones inside functions included (they are still a dependency, only a deferred one);
imports under ``if TYPE_CHECKING:`` do not. The one cycle allowed is a registry registering its own builders
(``models.registry`` imports the modules that ``@register_model`` their architectures).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "imagerec"
MAX_FILE_LINES = 400
MAX_TRAINING_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def package_of(module: str) -> str:
    """``imagerec.server.app`` -> ``imagerec.server``; a top-level module (``imagerec.classifier``) is its own."""
    return ".".join(module.split(".")[:2])


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(module: str) -> Iterator[tuple[str, str | None]]:
    """(imported module, imported name or None) for every imagerec import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "imagerec":
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "imagerec":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, None) if sub in MODULES else (target, alias.name)


def with_parents(module: str) -> set[str]:
    """``imagerec.export.formats`` -> it and ``imagerec.export``, ``imagerec``: importing a module runs the
    ``__init__`` of every package above it first, so those are dependencies too (and can close a cycle)."""
    parts = module.split(".")
    # the root's __init__ runs only quiet.py and version.py at import; its lazy __getattr__ is the public facade
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(MODULES)


def import_graph() -> dict[str, set[str]]:
    return {m: {p for t, _ in imports(m) for p in with_parents(t) if p != m} for m in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


PACKAGES = {m for m, p in MODULES.items() if p.name == "__init__.py"}


def is_registry_cycle(component: list[str]) -> bool:
    """A package that registers its own members, all inside it: the model registry and the modules that
    ``@register_model`` into it, or a package ``__init__`` that imports its command modules (``cli``)."""
    packages = {m if m in PACKAGES else m.rpartition(".")[0] for m in component}
    return len(packages) == 1 and any(m.endswith(".registry") or m in PACKAGES for m in component)


def test_a_package_init_is_a_dependency_of_its_modules():
    assert with_parents("imagerec.export.formats") == {"imagerec.export", "imagerec.export.formats"}


def test_the_checker_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    assert is_registry_cycle(["imagerec.models.registry", "imagerec.models.small_cnn"])
    assert is_registry_cycle(["imagerec.cli", "imagerec.cli.data"])
    assert not is_registry_cycle(["imagerec.classifier", "imagerec.evaluation"])
    assert not is_registry_cycle(["imagerec.export", "imagerec.export.publish", "imagerec.runtime.exported"])


def test_no_import_cycles():
    cycles = [c for c in strongly_connected(import_graph()) if not is_registry_cycle(c)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _private_definitions() -> dict[str, set[str]]:
    """package -> private names it defines (module-level and class-level defs, ``self._x = ...`` attributes)."""
    defined: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        names = defined.setdefault(package_of(module), set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {
        p: {n for n in names if n.startswith("_") and not n.startswith("__")} for p, names in defined.items()
    }


def test_no_package_reaches_into_another_packages_private_names():
    defined = _private_definitions()
    offences = []
    for module in MODULES:
        own = package_of(module)
        for target, name in imports(module):
            if name and name.startswith("_") and not name.startswith("__") and package_of(target) != own:
                offences.append(f"{module} imports {target}.{name}")
        others = set().union(*(names for p, names in defined.items() if p != own)) - defined.get(own, set())
        for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in others
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offences.append(f"{module}:{node.lineno} uses .{node.attr} of another package")
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_files_stay_small(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{MODULES[module]} has {lines} lines (at most {MAX_FILE_LINES})"


def test_training_functions_stay_small():
    long = []
    for module, path in MODULES.items():
        if not module.startswith("imagerec.training"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_TRAINING_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {size} lines")
    assert not long, f"functions over {MAX_TRAINING_FUNCTION_LINES} lines: " + ", ".join(long)
