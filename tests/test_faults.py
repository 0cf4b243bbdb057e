"""Faults with real processes: two workers on one queue, Redis restarted under running jobs."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.board import Board
from core.board.jobs import JobQueue
from core.domain.jobs import Requester, SeparationRequest
from core.settings import Settings
from testkit import SONGS, RedisServer, WorkerProcess, make_clip, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(
        SONGS / "librosa_karissa_hobbs_lets_go_fishin.ogg", tmp_path_factory.mktemp("fault") / "fishin.mp3", seconds=15
    )


async def _submit(queue: JobQueue, clip: Path, stems: str) -> str:
    ref = await queue.store_input(clip.read_bytes(), clip.name)
    request = SeparationRequest(input=ref, stems=stems, model="htdemucs", requester=Requester(platform="test"))
    return (await queue.submit(request)).job_id


def _starts(worker: WorkerProcess, job_id: str) -> int:
    return sum(1 for line in worker.log().splitlines() if f"{job_id}:separate(" in line and "→" in line)


async def test_two_workers_share_the_queue_and_never_run_a_job_twice(
    board: Board, tiny_env: dict[str, str], clip: Path, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    workers = [WorkerProcess(tiny_env, tmp_path / f"w{i}.log").start() for i in range(2)]
    worker_factory.extend(workers)
    for w in workers:
        w.wait_ready()
    jobs = [await _submit(board.jobs, clip, stems) for stems in ("vocals", "drums", "bass", "other")]
    results = await asyncio.gather(*(board.jobs.wait_result(j, timeout_s=200) for j in jobs))
    assert [r.status for r in results] == ["done"] * 4
    for job in jobs:
        assert sum(_starts(w, job) for w in workers) == 1
    assert all(any(_starts(w, j) for j in jobs) for w in workers)  # both took work


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/system-deps installs it)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_restart_keeps_queued_jobs_and_workers_reconnect(
    own_redis: RedisServer, tiny_env: dict[str, str], clip: Path, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    env = tiny_env | {"STEMBOT_REDIS_URL": own_redis.url}
    board = await Board.connect(Settings(redis_url=own_redis.url))
    queue = board.jobs
    try:
        worker = WorkerProcess(env, tmp_path / "w.log").start()
        worker_factory.append(worker)
        worker.wait_ready()
        running = await _submit(queue, clip, "vocals")
        queued = await _submit(queue, clip, "drums")
        await wait_until(lambda: _starts(worker, running), timeout=120)
        own_redis.stop()  # mid-job, with a second job waiting
        await asyncio.sleep(2)
        own_redis.start()
        results = await asyncio.gather(*(queue.wait_result(j, timeout_s=200) for j in (running, queued)))
        assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
        assert worker.proc is not None and worker.proc.poll() is None  # the same process carried on
    finally:
        await board.close()
