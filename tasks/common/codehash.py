"""The code part of a step's cache key, derived from what the step really imports.

A hand-kept list of a step's source files goes stale the day someone adds an import, and a
stale list reuses results made by old code. So the fingerprint is computed: start from the
step function (its own source, the imports in its body, the module-level imports of the
module it lives in, and the same-module helpers it calls), follow every import that lands in
this project's ``tasks/`` or ``workers/`` packages transitively (imports inside functions
included, ``__init__`` files of the packages passed through), and hash those files. Editing a
module any step reaches, however indirectly, changes that step's key; a module it never
reaches leaves the key alone.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
from pathlib import Path
from types import FunctionType
from typing import Any, Callable, Iterable

from .artifacts import PROJECT_ROOT

#: top-level packages whose sources make up a step's code, and the folder they live in
PROJECT_PACKAGES = ("tasks", "workers")
SOURCE_ROOT = PROJECT_ROOT


def module_file(name: str) -> Path | None:
    """Source file of a project module (``tasks.stun.corpus`` → ``tasks/stun/corpus.py``)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = SOURCE_ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _package_of(module: str, file: Path) -> str:
    return module if file.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(tree: ast.AST, module: str, file: Path) -> set[str]:
    """Project modules named by the import statements anywhere in ``tree``."""
    pkg = _package_of(module, file)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from pkg import name``: name may be a submodule or an attribute of pkg
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if module_file(n) is not None:
                found.add(n)
    return found


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.lru_cache(maxsize=None)
def _direct_imports(name: str, file: Path, mtime_ns: int, size: int) -> frozenset[str]:
    return frozenset(imported_modules(ast.parse(file.read_text()), name, file))


def module_closure(roots: Iterable[str]) -> set[str]:
    """Every project module reachable from ``roots`` through imports (packages included)."""
    seen: set[str] = set()
    todo = [p for r in roots for p in _with_parents(r) if module_file(p)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        file = module_file(name)
        assert file is not None
        st = file.stat()
        for dep in _direct_imports(name, file, st.st_mtime_ns, st.st_size):
            todo.extend(p for p in _with_parents(dep) if p not in seen and module_file(p))
    return seen


def _function_tree(fn: FunctionType) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(fn)))


def step_modules(fn: Callable) -> tuple[set[str], list[str]]:
    """(modules the step reaches, sources of the step and its same-module helpers)."""
    fn = inspect.unwrap(getattr(fn, "fn", fn))
    module = fn.__module__
    file = module_file(module)
    if file is None:  # a step defined outside the project (a test): its own source is its code
        return set(), [inspect.getsource(fn)]
    top = ast.parse(file.read_text())
    # module-level imports of the step's module (not those inside other steps' bodies)
    top_level = ast.Module(body=[n for n in top.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    roots = imported_modules(top_level, module, file)
    sources: list[str] = []
    helpers = {n.name: n for n in top.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    todo, seen = [fn.__name__], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in helpers:
            continue
        seen.add(name)
        node = helpers[name]
        sources.append(ast.unparse(node))
        roots |= imported_modules(node, module, file)
        todo.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    # module-level constants of the step's module (key lists, defaults) count too
    sources += [ast.unparse(n) for n in top.body if isinstance(n, (ast.Assign, ast.AnnAssign))]
    return roots, sources


def _hash_modules(h: Any, modules: Iterable[str]) -> str:
    for name in sorted(module_closure(modules)):
        file = module_file(name)
        assert file is not None
        h.update(str(file.relative_to(SOURCE_ROOT)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def code_fingerprint(fn: Callable) -> str:
    """Digest of a step's code: its own source plus every project module it reaches."""
    roots, sources = step_modules(fn)
    h = hashlib.sha256()
    for s in sources:
        h.update(s.encode())
    return _hash_modules(h, roots)
