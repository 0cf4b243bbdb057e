"""The import graph of a source tree, read from the AST, and the arrows that break its layers.

Every import counts wherever it is written (module top, inside a function, under
TYPE_CHECKING), and so do `importlib.import_module(...)` and `__import__(...)` calls: their
argument is a string literal, a module-level constant (a string, or a tuple or list of
strings), or a loop variable over such a constant. A call whose argument is none of those
is reported as unreadable, so a dynamic import cannot slip past the check.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

_DYNAMIC = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class Arrow:
    """`src` imports `dst` (dotted names) at `line` of src's file."""

    src: str
    dst: str
    line: int
    dynamic: bool = False

    def __str__(self) -> str:
        how = " (importlib string)" if self.dynamic else ""
        return f"{self.src}:{self.line} -> {self.dst}{how}"


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level names bound to a string or a tuple/list of strings."""
    out: dict[str, list[str]] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        strings = _strings(value)
        for target in targets:
            if isinstance(target, ast.Name) and strings is not None:
                out[target.id] = strings
    return out


def _strings(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [e.value for e in node.elts]  # type: ignore[attr-defined]
    return None


def _loop_sources(tree: ast.Module) -> dict[str, ast.expr]:
    """Loop variable -> what it iterates over, for `for name in X` anywhere in the module."""
    return {
        node.target.id: node.iter
        for node in ast.walk(tree)
        if isinstance(node, ast.For | ast.AsyncFor) and isinstance(node.target, ast.Name)
    }


def _dynamic_targets(call: ast.Call, constants: dict[str, list[str]], loops: dict[str, ast.expr]) -> list[str] | None:
    """The modules an import_module/__import__ call can load, or None when unreadable."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Name) and arg.id not in constants and arg.id in loops:
        arg = loops[arg.id]
    if isinstance(arg, ast.Name):
        return constants.get(arg.id)
    return _strings(arg)


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a relative `from ...name import` in `module`."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def arrows(root: Path, packages: Iterable[str]) -> tuple[list[Arrow], list[str]]:
    """Every import arrow out of `packages`, and the dynamic imports that could not be read."""
    found: list[Arrow] = []
    unreadable: list[str] = []
    tree_modules = modules(root, packages)
    for name, path in tree_modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        constants, loops = _constants(tree), _loop_sources(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [Arrow(name, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                found.append(Arrow(name, base, node.lineno))
                # `from pkg import mod` imports pkg.mod when mod is a module of the tree
                subs = (f"{base}.{a.name}" for a in node.names)
                found += [Arrow(name, sub, node.lineno) for sub in subs if sub in tree_modules]
            elif isinstance(node, ast.Call) and _call_name(node) in _DYNAMIC:
                targets = _dynamic_targets(node, constants, loops)
                if targets is None:
                    unreadable.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
                else:
                    found += [Arrow(name, t, node.lineno, dynamic=True) for t in targets]
    return found, unreadable


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(
    found: Iterable[Arrow], forbidden: Mapping[str, Iterable[str]], allowed: Mapping[tuple[str, str], str]
) -> list[str]:
    """The arrows from a layer (key of `forbidden`) into a name it may not import.

    `allowed` excuses (src module, dst module) pairs; its values say why.
    """
    bad = []
    for arrow in found:
        for layer, banned in forbidden.items():
            if not _within(arrow.src, layer) or (arrow.src, arrow.dst) in allowed:
                continue
            bad += [str(arrow) for b in banned if _within(arrow.dst, b)]
    return sorted(set(bad))


def cycle(
    found: Iterable[Arrow], known: Iterable[str], allowed: Mapping[tuple[str, str], str] | None = None
) -> list[str] | None:
    """One import cycle among the `known` modules (as graphlib reports it), or None.

    An arrow to one's own package does not count (Python imports a package before its
    modules anyway), nor does an `allowed` one.
    """
    known = set(known)
    graph: dict[str, set[str]] = {m: set() for m in known}
    excused = set(allowed or {})
    for arrow in found:
        inside = arrow.src in known and arrow.dst in known
        if inside and not _within(arrow.src, arrow.dst) and (arrow.src, arrow.dst) not in excused:
            graph[arrow.src].add(arrow.dst)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return None


def path_to(found: Iterable[Arrow], start: str, target: str) -> list[str] | None:
    """The modules from `start` to `target` (or one inside it) by a chain of imports, or None:
    what `start` pulls in when it is imported, whoever wrote the import on the way."""
    graph: dict[str, set[str]] = {}
    for arrow in found:
        graph.setdefault(arrow.src, set()).add(arrow.dst)
    came_from: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        module = todo.pop(0)
        if _within(module, target):
            chain = [module]
            while (previous := came_from[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        for nxt in sorted(graph.get(module, ())):
            if nxt not in came_from:
                came_from[nxt] = module
                todo.append(nxt)
    return None
