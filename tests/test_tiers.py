"""Tests are sorted into tiers by what they use, so a new test file needs no marks of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testkit.tiers import marks_for, names_used, shared_missing


@pytest.mark.parametrize(
    ("names", "explicit", "marks"),
    [
        (set(), (), set()),
        ({"redis_url", "queue_client", "np"}, (), set()),
        ({"ROCK"}, (), {"needs_shared"}),
        ({"rock_short", "tmp_path"}, (), {"needs_shared"}),
        ({"MODELS"}, (), {"needs_shared", "real_weights", "slow"}),
        ({"real_worker"}, (), {"needs_shared", "real_weights", "subprocess", "slow"}),
        ({"WorkerProcess", "tiny_env"}, (), {"subprocess", "slow"}),
        ({"run_stembot"}, (), {"subprocess", "slow"}),
        ({"worker_factory", "SONGS"}, (), {"subprocess", "needs_shared", "slow"}),
        ({"OpenVinoHTDemucs"}, (), {"openvino", "slow"}),
        ({"openvino"}, (), {"openvino", "slow"}),  # a parameter value
        (set(), ("slow",), {"slow"}),  # explicit, where nothing it names tells
        (set(), ("needs_shared", "timeout", "parametrize"), {"needs_shared"}),
    ],
)
def test_marks_from_the_names_a_test_uses(names: set[str], explicit: tuple[str, ...], marks: set[str]) -> None:
    assert marks_for(names, explicit) == marks


def _starts_a_worker() -> Any:
    from testkit import WorkerProcess

    return WorkerProcess


def _indirect() -> Any:
    return [_starts_a_worker() for _ in range(1)]


def _recursive(n: int) -> int:
    return _recursive(n - 1) if n else 0


# reached through a dict, so that this test itself does not count as starting a worker
HELPERS = {"indirect": _indirect, "recursive": _recursive}


def test_names_are_followed_through_the_modules_own_helpers() -> None:
    assert "WorkerProcess" in names_used(HELPERS["indirect"])  # two calls down, inside a comprehension
    assert "WorkerProcess" not in names_used(HELPERS["recursive"])  # and recursion ends
    assert "_recursive" in names_used(HELPERS["recursive"])


def test_shared_missing_names_the_first_missing_path(tmp_path: Path) -> None:
    there, gone = tmp_path / "shared", tmp_path / "shared" / "models"
    there.mkdir()
    assert shared_missing([there]) is None
    assert shared_missing([there, gone]) == f"the shared test data (../shared) is not at {gone}"
