"""The queue end to end: the job board → real Redis → `stembot worker` subprocesses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from core.board import Board
from core.board.jobs import JobQueue
from core.domain.jobs import Progress, Requester, SeparationRequest, Stage
from core.settings import Settings
from testkit import SONGS, WorkerProcess, make_clip, read_audio, run_stembot

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 s of a real song: long enough to cancel or kill a worker mid-job with the toy model."""
    return make_clip(
        SONGS / "librosa_karissa_hobbs_lets_go_fishin.ogg", tmp_path_factory.mktemp("long") / "fishin.mp3", seconds=60
    )


async def _request(queue: JobQueue, clip: Path, stems: str = "vocals", user: str = "u1") -> SeparationRequest:
    ref = await queue.store_input(clip.read_bytes(), clip.name)
    return SeparationRequest(
        input=ref, stems=stems, model="htdemucs", format="mp3", requester=Requester(platform="test", user_id=user)
    )


def _worker(env: dict[str, str], tmp_path: Path, workers: list[WorkerProcess], name: str = "w1") -> WorkerProcess:
    worker = WorkerProcess(env, tmp_path / f"{name}.log").start()
    workers.append(worker)
    worker.wait_ready()
    return worker


def _jobs_started(worker: WorkerProcess, job_id: str) -> int:
    return sum(1 for line in worker.log().splitlines() if f"{job_id}:separate(" in line and "→" in line)


async def _wait_stage(
    queue: JobQueue, job_id: str, stage: Stage, min_percent: float = 0, timeout: float = 240
) -> Progress:
    # A bound, not a speed check: a fresh worker's first job loads the model and decodes a long
    # clip first, which took over 60 s on a 2-core host at load 9-20.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = await queue.progress(job_id)
        if p is not None and p.stage == stage and p.percent >= min_percent:
            return p
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{job_id} never reached {stage} {min_percent}%")


async def test_round_trip_with_progress(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    rock_short: Path,
    worker_factory: list[WorkerProcess],
    work_tmp: Path,
) -> None:
    queue = board.jobs
    submission = await queue.submit(await _request(queue, rock_short, "vocals karaoke"))
    assert submission.state == "queued"
    first = await queue.progress(submission.job_id)
    assert first is not None and first.stage == Stage.queued and first.queue_position == 1
    _worker(tiny_env, tmp_path, worker_factory)
    seen = [p async for p in queue.watch(submission.job_id, interval_s=0.05, timeout_s=120)]
    stages = [p.stage for p in seen]
    assert stages[-1] == Stage.done
    assert Stage.separating in stages
    percents = [p.percent for p in seen if p.stage == Stage.separating]
    assert percents == sorted(percents)
    result = await queue.wait_result(submission.job_id)
    assert result.status == "done"
    assert [s.stem for s in result.stems] == ["vocals", "instrumental"]
    for stem in result.stems:
        path = tmp_path / stem.filename
        path.write_bytes(await queue.fetch(stem))
        assert abs(read_audio(path).shape[1] / 44100 - 3.0) < 0.1
    # a stored result carries no requester's name: the next asker may be someone else
    assert stem.filename == "song.instrumental.mp3"
    assert all(
        result.timings[stage] > 0 for stage in ("fetch", "decode", "separate", "encode", "store", "keep", "total")
    )
    assert list(work_tmp.iterdir()) == []


async def test_dedupe_and_cache(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    rock_short: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    queue = board.jobs
    first = await queue.submit(await _request(queue, rock_short, user="alice"))
    second = await queue.submit(await _request(queue, rock_short, user="bob"))
    assert (first.state, second.state) == ("queued", "joined")
    assert first.job_id == second.job_id
    other = await queue.submit(await _request(queue, rock_short, stems="drums", user="alice"))
    assert other.job_id != first.job_id
    worker = _worker(tiny_env, tmp_path, worker_factory)
    assert (await queue.wait_result(first.job_id, timeout_s=120)).status == "done"
    assert (await queue.wait_result(other.job_id, timeout_s=120)).status == "done"
    assert _jobs_started(worker, first.job_id) == 1
    worker.stop()
    # A repeat after completion is answered from the stored result, no worker needed.
    third = await queue.submit(await _request(queue, rock_short, user="carol"))
    assert third == type(third)(first.job_id, "cached")
    assert (await queue.result(first.job_id)).status == "done"  # type: ignore[union-attr]
    assert _jobs_started(worker, first.job_id) == 1


async def test_expired_artifacts_are_recomputed(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    rock_short: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    queue = board.jobs
    worker = _worker(tiny_env, tmp_path, worker_factory)
    job = await queue.submit(await _request(queue, rock_short))
    result = await queue.wait_result(job.job_id, timeout_s=120)
    await queue.store.delete(*(s.artifact_key for s in result.stems))
    again = await queue.submit(await _request(queue, rock_short))
    assert again.state == "queued"
    assert (await queue.wait_result(job.job_id, timeout_s=120)).status == "done"
    assert _jobs_started(worker, job.job_id) == 2


async def test_cancel_mid_job_stops_the_work(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    long_clip: Path,
    worker_factory: list[WorkerProcess],
    work_tmp: Path,
) -> None:
    queue = board.jobs
    _worker(tiny_env, tmp_path, worker_factory)
    request = await _request(queue, long_clip)
    job = await queue.submit(request)
    await _wait_stage(queue, job.job_id, Stage.separating, min_percent=5)
    assert await queue.cancel(job.job_id, request.requester) is True
    result = await queue.wait_result(job.job_id, timeout_s=60)
    assert result.status == "cancelled"
    last = await queue.progress(job.job_id)
    assert last is not None and last.stage == Stage.cancelled
    assert list(work_tmp.iterdir()) == []
    # a cancelled job is not a cached answer: asking again runs it again
    again = await queue.submit(await _request(queue, long_clip))
    assert again.state == "queued"


async def test_cancel_waits_for_every_requester(board: Board, rock_short: Path) -> None:
    queue = board.jobs
    alice, bob = await _request(queue, rock_short, user="alice"), await _request(queue, rock_short, user="bob")
    job = await queue.submit(alice)
    await queue.submit(bob)
    assert await queue.cancel(job.job_id, alice.requester) is False  # bob still wants it
    assert await queue.cancel(job.job_id, bob.requester) is True


async def test_cancel_before_start(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    rock_short: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    queue = board.jobs
    request = await _request(queue, rock_short)
    job = await queue.submit(request)
    assert await queue.cancel(job.job_id) is True
    _worker(tiny_env, tmp_path, worker_factory)
    assert (await queue.wait_result(job.job_id, timeout_s=60)).status == "cancelled"


async def test_killed_worker_does_not_leave_the_job_stuck(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    long_clip: Path,
    worker_factory: list[WorkerProcess],
    work_tmp: Path,
) -> None:
    queue = board.jobs
    first = _worker(tiny_env, tmp_path, worker_factory, "w1")
    job = await queue.submit(await _request(queue, long_clip))
    await _wait_stage(queue, job.job_id, Stage.separating, min_percent=5)
    first.kill()
    assert any(work_tmp.iterdir())  # the dead worker's scratch files
    second = _worker(tiny_env, tmp_path, worker_factory, "w2")
    # Only the heartbeat (1 s here: the dead claim lapses within 4 s) can free the job this
    # soon: without it, arq's claim would stand for the job timeout (an hour, far past this
    # bound). No stopwatch on the rerun itself: a loaded 2-core host took 66 s for it.
    assert "STEMBOT_JOB_TIMEOUT_S" not in tiny_env and Settings.model_fields["job_timeout_s"].default >= 3600
    result = await queue.wait_result(job.job_id, timeout_s=300)
    assert result.status == "done"
    assert _jobs_started(second, job.job_id) == 1
    assert list(work_tmp.iterdir()) == []


async def test_queue_position(board: Board, rock_short: Path, long_clip: Path) -> None:
    queue = board.jobs
    a = await queue.submit(await _request(queue, rock_short, stems="vocals"))
    b = await queue.submit(await _request(queue, rock_short, stems="drums"))
    c = await queue.submit(await _request(queue, long_clip, stems="bass"))
    assert [await board.workers.position(j.job_id) for j in (a, b, c)] == [1, 2, 3]
    assert await board.workers.position("sep-nonexistent") is None


async def test_queue_cap(redis_url: str, rock_short: Path) -> None:
    from core.domain.errors import QueueFull

    board = await Board.connect(Settings(redis_url=redis_url, max_queue=2))
    queue = board.jobs
    try:
        for stems in ("vocals", "drums"):
            await queue.submit(await _request(queue, rock_short, stems=stems))
        with pytest.raises(QueueFull):
            await queue.submit(await _request(queue, rock_short, stems="bass"))
    finally:
        await board.close()


def test_enqueue_cli_wait(
    tiny_env: dict[str, str], tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    _worker(tiny_env, tmp_path, worker_factory)
    out = tmp_path / "out"
    done = run_stembot(
        "enqueue",
        str(rock_short),
        "--stems",
        "drums bass",
        "--format",
        "flac",
        "--wait",
        "-o",
        str(out),
        env=tiny_env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("job sep-") and lines[0].endswith("queued")
    assert any(line.startswith("separating") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["rock.bass.flac", "rock.drums.flac"]
    again = run_stembot(
        "enqueue", str(rock_short), "--stems", "drums bass", "--format", "flac", env=tiny_env, timeout=60
    )
    assert again.stdout.split()[:3] == ["job", lines[0].split()[1], "cached"]


async def test_bad_input_through_the_worker(
    board: Board,
    tiny_env: dict[str, str],
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
    work_tmp: Path,
) -> None:
    queue = board.jobs
    worker = _worker(tiny_env, tmp_path, worker_factory)
    bad = tmp_path / "notes.mp3"
    bad.write_text("not a song\n" * 100)
    job = await queue.submit(await _request(queue, bad))
    result = await queue.wait_result(job.job_id, timeout_s=60)
    assert result.status == "failed" and result.error is not None
    assert result.error.code == "not_audio"
    assert "doesn't look like an audio" in result.error.message
    assert worker.proc is not None and worker.proc.poll() is None  # the worker lives on
    assert list(work_tmp.iterdir()) == []
    # a deterministic refusal is cached: the same bytes are not retried
    assert (await queue.submit(await _request(queue, bad))).state == "cached"


def test_run_starts_redis_and_a_worker(tiny_env: dict[str, str], tmp_path: Path) -> None:
    """`stembot run` on a box where no Redis answers: it starts one, and a worker, and stops both."""
    import signal
    import subprocess
    import sys

    import redis

    from testkit import free_port, wait_for

    port = free_port()
    env = tiny_env | {"STEMBOT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    try:
        client = redis.Redis(port=port)
        wait_for(lambda: _pings(client), timeout=30)
        wait_for(lambda: client.exists("stembot:health:stembot:queue"), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not _pings(redis.Redis(port=port))
    assert "starting redis-server" in (tmp_path / "run.log").read_text()


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.exceptions.ConnectionError:
        return False
