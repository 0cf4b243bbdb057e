"""Scaling pieces: the artifact budget and its eviction order, queue positions and ETAs from the
workers' own records, the benchmark engine (no torch), and a Redis at `maxmemory` refusing new
work in both bots while the jobs it accepted complete."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from bots.discord import create_bot
from core.board import Board
from core.board.artifacts import RedisArtifactStore, group_of
from core.board.workers import estimate_wait
from core.domain.jobs import InputRef, Requester, SeparationRequest, Stage
from core.media.artifacts import ArtifactMissing
from core.settings import Settings
from testkit import ROCK, RedisServer, WorkerProcess, drive, fill, make_clip, raw_redis, stembot_env
from testkit.dcbot import sim_env
from testkit.tgbot import ALICE, DM, start_bot, stop_bot
from testkit.tgbot import audio as _audio

pytestmark = pytest.mark.timeout(300)
BOB = {"id": 43, "is_bot": False, "first_name": "Bob"}
BOB_DM = {"id": 43, "type": "private"}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


def bench_env(redis_url: str, work_tmp: Path, **extra: str) -> dict[str, str]:
    return stembot_env(
        STEMBOT_REDIS_URL=redis_url,
        TMPDIR=str(work_tmp),
        STEMBOT_ENGINE="benchmark",
        STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND="0.05",
        STEMBOT_JOB_HEARTBEAT_S="1",
        **extra,
    )


def bench_worker(env: dict[str, str], log: Path, workers: list[WorkerProcess]) -> WorkerProcess:
    worker = WorkerProcess(env, log).start()
    workers.append(worker)
    worker.wait_ready()
    return worker


def request(ref: InputRef, stems: str, fmt: str = "mp3", user: str = "1") -> SeparationRequest:
    return SeparationRequest(
        input=ref,
        stems=stems,
        format=fmt,  # type: ignore[arg-type]
        model="htdemucs",
        requester=Requester(platform="test", user_id=user),
    )


async def test_budget_evicts_the_oldest_unpinned_artifact_first(client: Redis) -> None:
    store = RedisArtifactStore(client, "t:", budget_bytes=1000)
    blob = b"x" * 300
    for key in ("a", "b", "c"):
        await store.put(key, blob, 600)
    await store.pin("a", "job-1", 600)  # a queued job's input
    await store.put("d", blob, 600)  # 1200 > 1000: b, the oldest not pinned, goes
    assert [await store.exists(k) for k in "abcd"] == [1, 0, 1, 1]
    assert await store.stored_bytes() == 900
    assert await store.touch("c", 600)  # c counts as new again: d is now the oldest unpinned
    await store.put("e", blob, 600)
    assert [await store.exists(k) for k in "acde"] == [1, 1, 0, 1]
    await store.release("job-1")  # the job ended: its input may go now
    await store.put("f", blob, 600)
    assert [await store.exists(k) for k in "acef"] == [0, 1, 1, 1]
    with pytest.raises(ArtifactMissing):
        await store.get("a")
    await client.delete("t:artifact:c")  # expired: it leaves the count without an eviction
    assert await store.stored_bytes() == 600
    await store.delete("e")
    assert await store.stored_bytes() == 300
    await store.put("big", b"y" * 1500, 600)  # larger than the budget: everything else goes, not it
    assert [await store.exists(k) for k in ("f", "big")] == [0, 1]
    assert await store.stored_bytes() == 0  # the next sweep lets it go too: nothing pins it


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("input:" + "0" * 64, "input:" + "0" * 64),  # an input is a group of its own
        ("result:sep-1:vocals.mp3", "result:sep-1"),  # a job's stems go together
        ("sources:abc:htdemucs", "sources:abc:htdemucs"),  # a song's manifest ...
        ("sources:abc:htdemucs:vocals.flac", "sources:abc:htdemucs"),  # ... and its sources
        ("sources:abc:htdemucs:0-441000:drums.wav", "sources:abc:htdemucs:0-441000"),  # a section's
        ("a", "a"),
    ],
)
def test_artifacts_are_grouped_by_what_is_useless_alone(key: str, group: str) -> None:
    assert group_of(key) == group


@pytest.mark.parametrize(
    ("position", "avg", "slots", "running", "expected"),
    [
        (None, 10.0, 2, 0, None),  # not queued
        (3, None, 2, 0, None),  # no job has finished yet: no basis for a guess
        (2, 10.0, 4, 1, 0.0),  # an idle slot is free for it
        (1, 10.0, 4, 4, 1.25),  # the first of 4 busy slots frees in about 10 / 4 / 2
        (9, 10.0, 4, 4, 21.25),  # 8.5 turns of 10 / 4
        (3, 10.0, 0, 0, 30.0),  # no live worker: one job at a time
    ],
)
def test_estimate_wait(position: int | None, avg: float | None, slots: int, running: int, expected: float) -> None:
    assert estimate_wait(position, avg, slots, running) == expected


async def test_position_and_eta_come_from_the_workers_records(board: Board, redis_url: str, rock_short: Path) -> None:
    queue, raw = board.jobs, raw_redis(redis_url)
    ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
    jobs = [(await queue.submit(request(ref, stems))).job_id for stems in ("vocals", "drums", "bass", "other")]
    await board.workers.record_cycle(10)
    await board.workers.announce("host-a:1", 1, [], 30)
    await board.workers.announce("host-b:2", 1, [], 30)
    assert (await board.workers.capacity())[:2] == (2, 0)
    assert await board.workers.eta_s(2) == 0.0  # two idle slots take the first two at once
    for job_id in jobs[:2]:  # as a worker does when it takes a job
        await raw.set(in_progress_key_prefix + job_id, b"1")
        await board.jobs.started(job_id, int(await raw.zscore(board.settings.queue_name, job_id) or 0))
    assert [await board.workers.position(j) for j in jobs] == [0, 0, 1, 2]
    assert await board.workers.eta_s(1) == pytest.approx(2.5)  # half of one slot's turn: 10 s / 2 slots / 2
    assert await board.workers.eta_s(2) == pytest.approx(7.5)
    await raw.delete(in_progress_key_prefix + jobs[0])  # its worker died without a word
    await board.workers.prune_running()
    assert [await board.workers.position(j) for j in jobs] == [1, 0, 2, 3]
    await board.workers.withdraw("host-a:1", 1)
    assert (await board.workers.capacity())[:2] == (1, 1)


async def test_benchmark_engine_separates_without_torch(
    redis_url: str, work_tmp: Path, tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    worker = bench_worker(bench_env(redis_url, work_tmp), tmp_path / "w.log", worker_factory)
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
        job = await queue.submit(request(ref, "vocals drums", fmt="flac"))
        progress = [p async for p in queue.watch(job.job_id, interval_s=0.05)]
        result = await queue.wait_result(job.job_id, timeout_s=60)
        assert result.status == "done", result.error
        assert [s.stem for s in result.stems] == ["vocals", "drums"]
        assert [await queue.fetch(s) for s in result.stems] == [rock_short.read_bytes()] * 2  # the input, as stems
        assert any(p.stage == Stage.separating for p in progress)
    finally:
        await board.close()
    worker.stop()
    assert "benchmark engine" in worker.log()
    assert "torch not loaded" in worker.log()


async def test_a_worker_takes_the_next_job_when_one_ends_not_at_its_next_poll(
    redis_url: str, work_tmp: Path, tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    """One slot, four queued jobs, a 5 s poll: each job starts as the one before it ends
    (core.board.arqueue wakes the worker then), so the three gaps are nowhere near the
    2.5 s a poll would leave each on average."""
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
        jobs = [(await queue.submit(request(ref, stems))).job_id for stems in ("vocals", "drums", "bass", "other")]
        env = bench_env(redis_url, work_tmp, STEMBOT_WORKER_POLL_S="5")
        worker_factory.append(WorkerProcess(env, tmp_path / "w.log").start())
        for job_id in jobs:
            assert (await queue.wait_result(job_id, timeout_s=120)).status == "done"
        times = [await queue.times(job_id) for job_id in jobs]
        spans = sorted((t.started, t.finished) for t in times if t is not None)
        gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
        assert len(gaps) == 3 and sum(gaps) < 3.0, gaps
    finally:
        await board.close()


async def test_evicted_result_is_recomputed_and_a_queued_input_is_kept(
    redis_url: str, work_tmp: Path, tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    settings = Settings(redis_url=redis_url, artifact_budget_mb=2)
    budget = settings.artifact_budget_bytes
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
        first = await queue.submit(request(ref, "vocals"))
        await queue.store.put("filler:1", b"\0" * budget, 600)  # a whole budget of newer bytes
        assert await queue.store.exists(ref.artifact_key) == 1  # queued, so pinned: kept
        # No delivery grace for the stems (STEMBOT_RESULT_PIN_S=0), so they may go as soon as they are made.
        env = bench_env(redis_url, work_tmp, STEMBOT_ARTIFACT_BUDGET_MB="2", STEMBOT_RESULT_PIN_S="0")
        bench_worker(env, tmp_path / "w.log", worker_factory)
        done = await queue.wait_result(first.job_id, timeout_s=60)
        assert done.status == "done", done.error
        await queue.store.put("filler:2", b"\0" * budget, 600)  # the finished job's stems go
        assert await queue.store.exists(*(s.artifact_key for s in done.stems)) == 0
        assert await queue.store.stored_bytes() <= budget
        ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
        again = await queue.submit(request(ref, "vocals"))
        assert again.state == "queued"  # recomputed, as an expired result is
        redone = await queue.wait_result(again.job_id, timeout_s=60)
        assert redone.status == "done" and await queue.store.exists(redone.stems[0].artifact_key) == 1
    finally:
        await board.close()


async def test_full_redis_refuses_new_songs_in_both_bots_and_finishes_accepted_ones(
    full_redis: RedisServer,
    botapi: Any,
    work_tmp: Path,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    url = full_redis.url
    clip = make_clip(ROCK / "mixture.flac", tmp_path / "rock.flac", seconds=3)
    other = make_clip(ROCK / "mixture.flac", tmp_path / "later.flac", seconds=2)
    telegram = await start_bot(botapi, url)
    env = sim_env(create_bot(Settings(redis_url=url)))
    await env.start()
    try:
        # Accepted while there is room: one song on each bot, no worker yet.
        botapi.message(DM, ALICE, audio=_audio(botapi, clip), caption="/split vocals")
        guild = env.create_guild("band")
        channel = guild.create_text_channel("music")
        alice, bob = guild.add_member(env.create_user("alice")), guild.add_member(env.create_user("bob"))
        accepted = await alice.slash(channel, "split", file=("rock.flac", clip.read_bytes()), stems="drums")
        queue_len = redis.Redis.from_url(url)
        await drive(env, lambda: queue_len.zcard("stembot:queue") == 2, timeout=60)

        fill(url, 0.93)
        botapi.message(BOB_DM, BOB, audio=_audio(botapi, other), caption="/split vocals")
        refusal = "out of storage right now and cannot take new songs"
        await botapi.wait_for(lambda: [t for t in _texts(botapi) if refusal in t], timeout=60)
        refused = await bob.slash(channel, "split", file=("later.flac", other.read_bytes()), stems="bass")
        await drive(env, lambda: refused.response is not None and refusal in refused.response.content, timeout=60)
        assert queue_len.zcard("stembot:queue") == 2  # nothing of the refused requests was queued
        queue_len.close()

        # The accepted ones still complete, in the room the refusals kept free.
        bench_worker(bench_env(url, work_tmp), tmp_path / "w.log", worker_factory)
        await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=90)
        files = await drive(env, lambda: [a for m in accepted.followups for a in m.attachments], timeout=90)
        assert [f.filename for f in files] == ["rock - drums.mp3"]
        assert [c.params["chat_id"] for c in botapi.sent("sendAudio")] == [DM["id"]]
    finally:
        await env.shutdown()
        await stop_bot(telegram)


def _texts(botapi: Any) -> list[str]:
    return [str(c.params.get("text", "")) for c in botapi.sent("sendMessage") + botapi.sent("editMessageText")]
