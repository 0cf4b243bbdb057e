from __future__ import annotations

import os


def _share_the_cores() -> None:
    """Under `pytest -n N`, each of the N processes (and the workers and CLIs it starts, which
    inherit its environment) gets the cores divided by N for its thread pools.

    Each library sizes its pool to the whole machine, so N processes at once oversubscribe it,
    and libgomp's threads spin while they wait for each other: on 2 cores, `pytest -n 2
    tests/test_engine.py` took 186 CPU-s and 108 s; with this, 114 CPU-s and 74 s. It runs
    before numpy or torch is imported (they read these once, at load); a value already set wins.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")  # set in xdist's workers only
    if workers is None:  # one process (or xdist's controller, whose environment they inherit)
        return
    threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


_share_the_cores()

from testkit import zygote

# The suite's `stembot worker`s are forked from a process that has imported torch and warmed
# detection: 0.4 CPU-s to start one instead of 3.8, over a hundred starts (testkit/zygote.py).
zygote.enable()

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from telegram.ext import Application

from testkit import (
    MODELS,
    ROCK,
    SHARED,
    RedisServer,
    WorkerProcess,
    free_port,
    make_clip,
    stembot_env,
    wait_for,
    write_tiny_repo,
)
from testkit.botapi import BotApiServer
from testkit.testdb import hold_test_db
from testkit.tgbot import start_bot, stop_bot
from testkit.tiers import item_names, marks_for, shared_missing

# Moved to testkit; re-exported only for branches in flight that import them from here
# (tests/test_layers.py fails on such an import).
__all__ = ["free_port", "wait_for"]


def _test_redis_db() -> int:
    """The tests' own Redis db: STEMBOT_TEST_REDIS_DB, plus the xdist worker's index.

    Under `pytest -n N` every worker flushes and fills a db of its own, so they never see
    each other's keys: with the default 12 and `-n 3`, dbs 12, 13 and 14 (15 is the benchmarks').
    """
    base = int(os.environ.get("STEMBOT_TEST_REDIS_DB", "12"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3" under xdist
    db = base + int(worker.removeprefix("gw"))
    if db > 15:
        raise pytest.UsageError(f"Redis has dbs 0-15: STEMBOT_TEST_REDIS_DB={base} leaves no db for xdist {worker}")
    return db


TEST_REDIS_DB = _test_redis_db()
TEST_REDIS_URL = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
_CACHE_KEY = pytest.StashKey[str]()


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = shared_missing([SHARED, MODELS])
    # CI must test everything: a missing ../shared there is an error, never a row of skips.
    if missing and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(f"CI=true but {missing}: CI runs every test")
    # One OpenVINO conversion per model per run, shared by every worker the tests start. The
    # xdist controller's sessionstart runs before it spawns the workers, so they inherit
    # this directory; worker/compiled.py's temp-dir + rename keeps two racing converters safe.
    if "STEMBOT_ENGINE_CACHE_DIR" not in os.environ:
        created = tempfile.mkdtemp(prefix="stembot-engine-cache-")
        os.environ["STEMBOT_ENGINE_CACHE_DIR"] = created
        session.config.stash[_CACHE_KEY] = created


def pytest_sessionfinish(session: pytest.Session) -> None:
    created = session.config.stash.get(_CACHE_KEY, None)
    if created:
        shutil.rmtree(created, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers from what each test uses (testkit/tiers.py); a skip with the reason without ../shared."""
    missing = shared_missing([SHARED, MODELS])
    for item in items:
        have = {m.name for m in item.iter_markers()}
        found = marks_for(item_names(item), have)
        for mark in sorted(found - have):
            item.add_marker(mark)
        if missing and "needs_shared" in found:
            item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repo(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def engine_cache() -> Path:
    """Where this run's engines keep what OpenVINO and torch.compile build (pytest_sessionstart's)."""
    from core.settings import Settings

    return Settings().engine_cache_dir


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis db of the tests' own (one per xdist worker), emptied before each test."""
    hold_test_db(TEST_REDIS_DB)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield TEST_REDIS_URL
    client.close()


@pytest.fixture
def work_tmp(tmp_path: Path) -> Path:
    """TMPDIR for subprocesses, so a test can assert that nothing was left behind."""
    path = tmp_path / "worker-tmp"
    path.mkdir()
    return path


@pytest.fixture
def tiny_env(tiny_repo: Path, redis_url: str, work_tmp: Path) -> dict[str, str]:
    return stembot_env(
        STEMBOT_MODEL_REPO=str(tiny_repo),
        STEMBOT_REDIS_URL=redis_url,
        TMPDIR=str(work_tmp),
        STEMBOT_DEVICE="cpu",
        STEMBOT_JOB_HEARTBEAT_S="1",
        STEMBOT_ALLOW_PRIVATE_URLS="true",
    )


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    yield workers
    for w in workers:
        w.stop()


@pytest.fixture(scope="session")
def rock_short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of the MUSDB18 sample, as FLAC."""
    return make_clip(ROCK / "mixture.flac", tmp_path_factory.mktemp("clips") / "rock.flac", seconds=3)


@pytest.fixture
async def board(redis_url: str) -> AsyncIterator[object]:
    from core.board import Board
    from core.settings import Settings

    board = await Board.connect(Settings(redis_url=redis_url))
    yield board
    await board.close()


@pytest.fixture
def real_worker(redis_url: str, work_tmp: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A `stembot worker` with the shared htdemucs weights, for SDR checks through a bot."""
    env = stembot_env(
        STEMBOT_MODEL_REPO=str(MODELS), STEMBOT_REDIS_URL=redis_url, TMPDIR=str(work_tmp), STEMBOT_DEVICE="cpu"
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    worker.wait_ready()
    yield worker
    worker.stop()


@pytest.fixture
def tiny_worker(tiny_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    """A `stembot worker` with the toy model: fast, for plumbing tests."""
    worker = WorkerProcess(tiny_env, tmp_path / "tiny-worker.log").start()
    worker.wait_ready()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """An S3 endpoint: moto's server (no MinIO binary can be had here); `testkit.s3_settings`
    gives each test a bucket of its own on it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis with a small `maxmemory` and `noeviction`, as the compose file runs it
    (its AOF written every second: a write that waited for the disk, on a host running three
    suites at once, outlasted a Discord handler's settling)."""
    server = RedisServer(tmp_path, fsync="everysec")
    server.start()
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory", 32 * 1024 * 1024)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.close()
    yield server
    server.stop()


@pytest.fixture
async def botapi(unused_tcp_port: int) -> AsyncIterator[BotApiServer]:
    server = BotApiServer()
    await server.start(unused_tcp_port)
    yield server
    await server.stop()


@pytest.fixture
async def env(redis_url: str) -> AsyncIterator[Any]:
    """The Discord bot running in simcord (an in-process Discord on a virtual clock), with the
    tests' settings (`testkit.dcbot`), as simcord's own `simcord_env` fixture runs one."""
    from testkit.dcbot import discord_bot, sim_env

    env = sim_env(discord_bot(redis_url))
    await env.start()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def bot(botapi: BotApiServer, redis_url: str) -> AsyncIterator[Application]:  # type: ignore[type-arg]
    app = await start_bot(botapi, redis_url)
    yield app
    await stop_bot(app)
