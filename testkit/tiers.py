"""Which tier a test is in, from what it uses: the markers tests/conftest.py gives each test.

A test gets a marker when its code, its fixtures' code or a function of its own module that
it calls (transitively) names one of the trigger names, or when it is parametrized with one:
a new test file is sorted without marks of its own.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

SHARED_NAMES = frozenset({"SHARED", "MODELS", "MULTITRACK", "SONGS", "ROCK", "rock_short"})
TRIGGERS: Mapping[str, frozenset[str]] = {
    "needs_shared": SHARED_NAMES | {"real_worker"},
    "real_weights": frozenset({"MODELS", "real_worker"}),
    "subprocess": frozenset(
        {"WorkerProcess", "run_stembot", "RedisServer", "Popen", "tiny_worker", "real_worker", "worker_factory"}
    ),
    "openvino": frozenset({"OpenVinoHTDemucs", "ensure_ir", "compiled", "openvino"}),
}
# Slow however it is written: the real model takes many seconds of CPU per song on 2 cores; a
# process of our own (a worker, the CLI, an OpenVINO conversion) seconds just to import torch.
# Other slow tests carry an explicit @pytest.mark.slow.
SLOW_BECAUSE = frozenset({"real_weights", "subprocess", "openvino"})


def marks_for(names: Iterable[str], explicit: Iterable[str] = ()) -> set[str]:
    """The markers of a test that names `names` and carries the `explicit` markers."""
    names = set(names)
    found = {mark for mark, triggers in TRIGGERS.items() if names & triggers}
    found |= set(explicit) & (set(TRIGGERS) | {"slow"})
    return found | {"slow"} if found & SLOW_BECAUSE else found


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    yield from code.co_varnames
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def names_used(func: Callable[..., Any], seen: set[int] | None = None) -> set[str]:
    """Names a function's code mentions, following the functions of its own module it calls."""
    seen = set() if seen is None else seen
    func = getattr(func, "__wrapped__", func)
    code = getattr(func, "__code__", None)
    if code is None or id(code) in seen:
        return set()
    seen.add(id(code))
    names = set(_code_names(code))
    module_globals: dict[str, Any] = getattr(func, "__globals__", {})
    for name in list(names):
        called = module_globals.get(name)
        if isinstance(called, types.FunctionType) and called.__module__ == func.__module__:
            names |= names_used(called, seen)
    return names


def item_names(item: Any) -> set[str]:
    """What a collected pytest item uses: fixtures, parameters, and the names in its code."""
    seen: set[int] = set()
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    names |= {v for v in getattr(callspec, "params", {}).values() if isinstance(v, str)}
    test = getattr(item, "function", None)
    if test is not None:
        names |= names_used(test, seen)
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        for fixturedef in defs:
            names |= names_used(fixturedef.func, seen)
    return names


def shared_missing(paths: Iterable[Path]) -> str | None:
    """Why the tests that need ../shared cannot run, or None when they can."""
    missing = [p for p in paths if not p.is_dir()]
    return f"the shared test data (../shared) is not at {missing[0]}" if missing else None
