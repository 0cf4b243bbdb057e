"""The layers hold: the real import graph (importlib strings included) has no arrow against them."""

from __future__ import annotations

from pathlib import Path

from testkit import ROOT
from testkit.layers import Arrow, arrows, cycle, modules, path_to, violations

# What each layer may never import (README, "Rules of the house").
FORBIDDEN = {
    "core": ("worker", "bots", "torch", "demucs", "openvino", "librosa", "soxr", "telegram", "discord"),
    # the job board serves the use cases above it (core.board's docstring), never imports them
    "core.board": ("core.desk", "core.cli", "core.links"),
    "bots": ("worker", "torch", "demucs", "openvino", "librosa", "soxr"),
    "worker": ("bots", "telegram", "discord"),
}
# The one excused arrow: `stembot` is one command. core/cli.py's dispatcher loads, by the
# module names in PROVIDERS, the commands the upper layers provide, lazily when it builds the
# parser, and carries on without them when they are not installed. It imports nothing else
# of theirs, and they import core.cli (for `Command`) without it importing them at load time.
ALLOWED = {
    ("core.cli", "worker.cli"): "the `stembot` dispatcher loads the commands worker provides",
    ("core.cli", "bots.cli"): "the `stembot` dispatcher loads the commands the bots provide",
}
# Only the job board (core.board) touches Redis or arq (or the `limits` library's storage, a
# Redis client of its own; its rate-string parser is plain). tests/, testkit/ and bench/ may
# use a raw Redis, but only to set up or inspect what a test needs (testkit.raw_redis); the
# behaviour they check goes through the board's verbs.
BOARD = "core.board"
BOARD_ONLY = ("redis", "arq", "limits.aio")
# tests and bench share helpers only through testkit; no test module imports another.
TEST_SIDE = {"tests": ("tests", "bench"), "bench": ("tests",), "testkit": ("tests", "bench")}
PACKAGES = ("core", "worker", "bots")
# The engine takes its options as arguments and reads no settings (issue #20): the worker's
# wiring (worker.engine, worker.main, worker.tasks, worker.cli) passes them from `Settings`.
ENGINE = (
    "worker.windowed", "worker.batcher", "worker.inductor", "worker.compiled", "worker.network",
    "worker.separator", "worker.models",
)  # fmt: skip
SETTINGS = "core.settings"


def test_no_arrow_runs_against_the_layers() -> None:
    found, unreadable = arrows(ROOT, PACKAGES)
    assert unreadable == [], "dynamic imports the check cannot read: name the module in a constant"
    assert violations(found, FORBIDDEN, ALLOWED) == []
    # the excused arrows are really there: a stale allow-list would hide nothing and mean nothing
    assert {(a.src, a.dst) for a in found if a.dynamic} == set(ALLOWED)


def test_no_import_cycle() -> None:
    found, _ = arrows(ROOT, PACKAGES)
    assert cycle(found, modules(ROOT, PACKAGES), ALLOWED) is None


def test_the_engine_reads_no_settings() -> None:
    """No engine module imports the settings, nor anything that does."""
    found, _ = arrows(ROOT, PACKAGES)
    assert {module: path_to(found, module, SETTINGS) for module in ENGINE} == dict.fromkeys(ENGINE)
    assert path_to(found, "worker.engine", SETTINGS) == ["worker.engine", SETTINGS]  # the wiring does


def board_violations(found: list[Arrow]) -> list[str]:
    """Arrows into Redis or arq from any module outside the board."""
    outside = [a for a in found if a.src != BOARD and not a.src.startswith(BOARD + ".")]
    return violations(outside, dict.fromkeys(PACKAGES, BOARD_ONLY), {})


def test_only_the_board_touches_redis_or_arq() -> None:
    found, _ = arrows(ROOT, PACKAGES)
    assert board_violations(found) == [], "reach Redis and arq through core.board's verbs"
    assert any(a.src.startswith(BOARD) and a.dst == "redis.asyncio" for a in found)  # the check sees the board


def test_the_board_check_finds_redis_outside_the_board(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/board/__init__.py": "import redis\nfrom arq import create_pool\n",
            "core/board/jobs.py": "from redis.asyncio import Redis\n",
            "core/desk.py": "def later():\n    from arq.jobs import Job\n",
            "core/limits.py": "from limits.aio.storage import RedisStorage\n",
            "bots/__init__.py": "",
            "bots/chat.py": "import importlib\nimportlib.import_module('redis.asyncio')\n",
            "worker/__init__.py": "",
            "worker/tasks.py": "from redis.exceptions import RedisError\nimport core.board\n",
        },
    )
    found, _ = arrows(root, PACKAGES)
    assert board_violations(found) == [
        "bots.chat:2 -> redis.asyncio (importlib string)",
        "core.desk:2 -> arq.jobs",
        "core.limits:1 -> limits.aio.storage",
        "worker.tasks:1 -> redis.exceptions",
    ]


def test_tests_and_bench_share_only_testkit() -> None:
    found, unreadable = arrows(ROOT, tuple(TEST_SIDE))
    assert unreadable == []
    assert violations(found, TEST_SIDE, {}) == [], "import what tests and bench share from testkit"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


PLANTED = {
    "core/__init__.py": "",
    "core/settings.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from core.ffmpeg import X\n",
    "core/ffmpeg.py": "from . import settings\n",
    "core/cli.py": (
        "import importlib\n"
        "PROVIDERS = ('worker.cli', 'bots.cli')\n"
        "def commands():\n"
        "    for module in PROVIDERS:\n"
        "        importlib.import_module(module)\n"
    ),
    "core/plugins.py": "from importlib import import_module\nNAME: str = 'bots.extra'\nimport_module(NAME)\n",
    "core/sneaky.py": "def load(name):\n    return __import__(name)\nLATER = __import__('worker.engine')\n",
    "bots/__init__.py": "",
    "bots/chat.py": "import core.settings\n\ndef heavy():\n    import torch.nn\n",
    "worker/__init__.py": "",
    "worker/cli.py": "from core.cli import commands\n",
    "worker/tasks.py": "from bots import chat\nimport telegram as tg\n",
}


def test_the_check_finds_planted_arrows(tmp_path: Path) -> None:
    root = _tree(tmp_path, PLANTED)
    found, unreadable = arrows(root, PACKAGES)
    assert unreadable == ["core.sneaky:2: __import__(name)"]
    assert violations(found, FORBIDDEN, {("core.cli", "worker.cli"): "excused"}) == [
        "bots.chat:4 -> torch.nn",
        "core.cli:5 -> bots.cli (importlib string)",
        "core.plugins:3 -> bots.extra (importlib string)",
        "core.sneaky:3 -> worker.engine (importlib string)",
        "worker.tasks:1 -> bots",
        "worker.tasks:1 -> bots.chat",
        "worker.tasks:2 -> telegram",
    ]


def test_the_check_finds_cycles_type_only_and_through_importlib(tmp_path: Path) -> None:
    root = _tree(tmp_path, PLANTED)
    found, _ = arrows(root, PACKAGES)
    known = modules(root, PACKAGES)
    assert set(cycle(found, modules(root, ["core"])) or []) == {"core.settings", "core.ffmpeg"}
    fixed = [a for a in found if a.src != "core.settings"]
    assert set(cycle(fixed, known) or []) == {"core.cli", "worker.cli"}  # through an importlib string
    assert cycle(fixed, known, {("core.cli", "worker.cli"): "excused"}) is None


def test_the_settings_check_follows_imports_through_other_modules(tmp_path: Path) -> None:
    root = _tree(tmp_path, PLANTED)
    found, _ = arrows(root, PACKAGES)
    assert path_to(found, "core.ffmpeg", SETTINGS) == ["core.ffmpeg", SETTINGS]  # `from . import settings`
    assert path_to(found, "bots.chat", SETTINGS) == ["bots.chat", SETTINGS]
    assert path_to(found, "worker.tasks", SETTINGS) == ["worker.tasks", "bots.chat", SETTINGS]
    assert path_to(found, "core.cli", SETTINGS) is None


def test_the_test_side_check_finds_a_test_importing_a_test(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tests/__init__.py": "",
            "tests/test_a.py": "from tests.test_b import ALICE\nfrom testkit import ROCK\n",
            "tests/test_b.py": "ALICE = 1\n",
            "bench/__init__.py": "",
            "bench/run.py": "from bench.scale import x\nfrom tests.helpers import y\n",
            "testkit/__init__.py": "",
        },
    )
    found, _ = arrows(root, tuple(TEST_SIDE))
    assert violations(found, TEST_SIDE, {}) == [
        "bench.run:2 -> tests.helpers",
        "tests.test_a:1 -> tests.test_b",
    ]
