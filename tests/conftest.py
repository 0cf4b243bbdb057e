from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from tests.helpers import (
    MODELS,
    ROCK,
    SHARED,
    RedisServer,
    WorkerProcess,
    free_port,
    make_clip,
    stembot_env,
    write_tiny_repo,
)

TEST_REDIS_DB = int(os.environ.get("STEMBOT_TEST_REDIS_DB", "13"))
TEST_REDIS_URL = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
_CACHE_KEY = pytest.StashKey[str]()
_DB_LOCKS: dict[int, IO[bytes]] = {}  # held for the life of the process that uses the db


def hold_test_db(db: int = TEST_REDIS_DB) -> None:
    """Make this process the only test session on Redis db `db`, or stop the run saying why.

    Each test empties the db, and the workers and bots it starts take any job they find
    there: two sessions on one db (two checkouts, or pytest-xdist's workers) wipe each
    other's results mid-test and deliver each other's songs, failures that read like bugs
    of the bot (a job that runs twice, a status stuck at "queued")."""
    if db in _DB_LOCKS:
        return
    handle = db_lock_path(db).open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        pytest.exit(
            f"another test session is using Redis db {db}: set STEMBOT_TEST_REDIS_DB to a db of your own "
            "(and run pytest-xdist's workers on one db each, never together on one)",
            returncode=3,
        )
    _DB_LOCKS[db] = handle


def db_lock_path(db: int) -> Path:
    return Path(tempfile.gettempdir()) / f"stembot-test-redis-db-{db}.lock"


def let_go_of_test_db(db: int) -> None:
    handle = _DB_LOCKS.pop(db, None)
    if handle is not None:
        handle.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    assert SHARED.is_dir(), f"the shared test data must sit beside the repo at {SHARED}"
    assert MODELS.is_dir(), f"missing {MODELS}"
    # One OpenVINO conversion per model per session, shared by every worker the tests start.
    if "STEMBOT_ENGINE_CACHE_DIR" not in os.environ:
        created = tempfile.mkdtemp(prefix="stembot-engine-cache-")
        os.environ["STEMBOT_ENGINE_CACHE_DIR"] = created
        session.config.stash[_CACHE_KEY] = created


def pytest_sessionfinish(session: pytest.Session) -> None:
    created = session.config.stash.get(_CACHE_KEY, None)
    if created:
        shutil.rmtree(created, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repo(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis db of the tests' own, emptied before each test that uses it."""
    hold_test_db()
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
async def queue_client(redis_url: str) -> AsyncIterator[object]:
    from core.queue import QueueClient
    from core.settings import Settings

    client = await QueueClient.connect(Settings(redis_url=redis_url))
    yield client
    await client.close()


def wait_for(predicate, timeout: float = 30, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


__all__ = ["free_port", "subprocess", "wait_for"]


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


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis with a small `maxmemory` and `noeviction`, as the compose file runs it."""
    server = RedisServer(tmp_path)
    server.start()
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory", 32 * 1024 * 1024)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.close()
    yield server
    server.stop()
