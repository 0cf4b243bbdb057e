"""Bounds of the store, the queue and the worker's logs (issue #21: N4, N5, N12, N14, N20)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from arq.constants import in_progress_key_prefix

from bots.discord import create_bot
from core.board import Board
from core.board.artifacts import RedisArtifactStore
from core.board.workers import estimate_wait_by_rate
from core.desk.job_desk import Finished, JobDesk, status_line
from core.domain.deliveries import Delivery
from core.domain.errors import StorageFull, TooLarge
from core.domain.jobs import JobResult, Progress, Requester, SeparationRequest, Song, Stage
from core.domain.stems import parse_stems
from core.logs import MAX_RECORD_CHARS, mask_credentials, masked_url, setup_logging
from core.settings import Settings
from testkit import (
    ROCK,
    RedisServer,
    WorkerProcess,
    drive,
    ffmpeg,
    fill,
    make_clip,
    raw_redis,
    run_stembot,
    stembot_env,
    wait_for,
)
from testkit.dcbot import sim_env
from testkit.tgbot import ALICE, DM, start_bot, stop_bot
from testkit.tgbot import audio as _audio

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://default:s3cret@redis:6379/2", "redis://default:***@redis:6379/2"),
        ("rediss://user:p%40ss@cache.example.com/0", "rediss://user:***@cache.example.com/0"),
        ("redis://tokenonly@redis/0", "redis://***@redis/0"),
        ("unix://:pw@/var/run/redis.sock?db=1", "unix://:***@/var/run/redis.sock?db=1"),
        ("http://minio:9000", "http://minio:9000"),
        ("https://ak:sk@[::1]:9000/bucket", "https://ak:***@[::1]:9000/bucket"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown
    assert mask_credentials(f"connecting to {url} now") == f"connecting to {shown} now"


def test_a_bot_token_in_a_logged_url_is_masked() -> None:
    url = "https://api.telegram.org/bot123456789:AAEhBP0av28jPr_Qu4y5CWaxoNNtPuAbc9Q/getUpdates"
    assert mask_credentials(f"POST {url} 200") == "POST https://api.telegram.org/bot123456789:***/getUpdates 200"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    yield out
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_records_are_masked_and_bounded(fmt: str, captured: io.StringIO) -> None:
    setup_logging(Settings(log_format=fmt))  # type: ignore[arg-type]
    logging.getLogger().handlers[0].setStream(captured)  # type: ignore[attr-defined]
    log = logging.getLogger("stembot.test")
    log.info("on %s", "redis://:hunter2@redis:6379/0")
    try:
        raise redis.exceptions.OutOfMemoryError(f"Command # 1 (SET k {b'x' * 5_000_000!r}) caused error")
    except redis.exceptions.RedisError:
        log.exception("store failed")
    text = captured.getvalue()
    assert "hunter2" not in text and "redis://:***@redis:6379/0" in text
    assert len(text) < 3 * MAX_RECORD_CHARS
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[1]["message"] == "store failed" and "OutOfMemoryError" in lines[1]["exc_info"]


def test_the_worker_never_logs_its_redis_password(tmp_path: Path, work_tmp: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", "hunter2")
        url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
        env = stembot_env(STEMBOT_REDIS_URL=url, STEMBOT_ENGINE="benchmark", TMPDIR=str(work_tmp))
        worker = WorkerProcess(env, tmp_path / "w.log").start()
        try:
            wait_for(lambda: "stembot worker on" in worker.log(), timeout=60)
            worker.wait_ready()
        finally:
            worker.stop()
        assert "hunter2" not in worker.log()
        assert f"redis://:***@127.0.0.1:{server.port}/0" in worker.log()
    finally:
        redis.Redis(port=server.port, password="hunter2").config_set("requirepass", "")  # so stop() may shut it
        server.stop()


# --- N4: a full Redis keeps room for the results of the jobs it accepted -------------------


def bench_env(url: str, work_tmp: Path) -> dict[str, str]:
    return stembot_env(
        STEMBOT_REDIS_URL=url,
        TMPDIR=str(work_tmp),
        STEMBOT_ENGINE="benchmark",  # stems are copies of the input: their size is known
        STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND="0.05",
        STEMBOT_JOB_HEARTBEAT_S="1",
    )


async def test_accepted_jobs_keep_room_for_their_results(
    full_redis: RedisServer, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    url = full_redis.url
    songs = []
    for i in range(10):  # ten different songs: ten jobs, none shared
        path = tmp_path / f"song{i}.wav"
        ffmpeg("-ss", f"{i * 0.3}", "-i", f"file:{ROCK / 'mixture.flac'}", "-t", "3", "-ac", "2", f"file:{path}")
        songs.append(path.read_bytes())
    fill(url, 0.45)  # 32 MB maxmemory: about 14 MB left below the 90 % mark
    settings = Settings(redis_url=url, redis_full_ratio=0.9, user_rate="100/minute", chat_rate="100/minute")
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        desk = JobDesk(settings, board, "test")
        accepted, refused = [], 0
        for i, data in enumerate(songs):
            delivery = Delivery(platform="test", job_id="", chat_id=f"c{i}", user_id=f"u{i}")
            try:
                # Four WAV stems of 3 s: 2.1 MB of results for a 0.5 MB input.
                done = await desk.accept(
                    Song(data, f"song{i}.wav"), parse_stems("vocals,drums,bass,other"), "wav", delivery
                )
                accepted.append(done.delivery.job_id)
            except StorageFull:
                refused += 1
        assert len(accepted) >= 2 and refused >= 1, (len(accepted), refused)

        worker = WorkerProcess(bench_env(url, work_tmp), tmp_path / "w.log").start()
        worker_factory.append(worker)
        results = [await queue.wait_result(job_id, timeout_s=90) for job_id in accepted]
        assert [r.status for r in results] == ["done"] * len(accepted), [r.error for r in results]
        for result in results:
            assert [len(await queue.fetch(s)) for s in result.stems] == [len(songs[0])] * 4
        assert await board.room.reserved_bytes() == 0  # every reservation was given back
    finally:
        await board.close()


async def test_a_refused_store_carries_and_logs_no_payload(full_redis: RedisServer, captured: io.StringIO) -> None:
    client = redis.asyncio.Redis.from_url(full_redis.url)
    store = RedisArtifactStore(client)
    with pytest.raises(redis.exceptions.OutOfMemoryError):  # fill Redis past its maxmemory
        for i in range(64):
            await client.set(f"filler:{i}", b"\0" * 1024 * 1024)
    setup_logging(Settings())
    logging.getLogger().handlers[0].setStream(captured)  # type: ignore[attr-defined]
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError) as err:
            await store.put("result:job:vocals.wav", bytes(range(256)) * 12_000, ttl_s=60)
        assert len(str(err.value)) < 500 and "maxmemory" in str(err.value)
        try:
            raise err.value
        except redis.exceptions.RedisError:
            logging.getLogger("worker.tasks").exception("job x failed")
        assert 0 < len(captured.getvalue()) < 4000
        assert "\\x01\\x02\\x03" not in captured.getvalue()
    finally:
        await client.aclose()


# --- N12: a cancel is one waiter's, never another's ---------------------------------------


async def _until_finished(desk: JobDesk, delivery_id: str, timeout_s: float = 90) -> JobResult:
    """Walk one chat's delivery as a bot's loop does, until it is told a result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        delivery = await desk.book.get(delivery_id)
        assert delivery is not None
        step = await desk.step(delivery, time.time())
        if isinstance(step, Finished):
            return step.result
        await asyncio.sleep(0.2)
    raise TimeoutError(delivery_id)


async def test_a_cancel_right_before_another_user_sends_the_same_song(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    song = tmp_path / "song.wav"
    ffmpeg("-i", f"file:{ROCK / 'mixture.flac'}", "-t", "2", f"file:{song}")
    settings = Settings(redis_url=redis_url)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        desk = JobDesk(settings, board, "test")
        stems = parse_stems("vocals")

        async def ask(user: str) -> str:
            delivery = Delivery(platform="test", job_id="", chat_id=f"chat-{user}", user_id=user)
            return (await desk.accept(Song(song.read_bytes(), "song.wav"), stems, "mp3", delivery)).delivery.id

        alice = await ask("alice")
        assert await desk.cancel(alice, "alice") == "Cancelling…"  # she alone waited: the job is told to stop
        bob = await ask("bob")  # the same song a moment later: the same job, which must run for him
        worker = WorkerProcess(bench_env(redis_url, work_tmp), tmp_path / "w.log").start()
        worker_factory.append(worker)
        assert (await _until_finished(desk, alice)).status == "cancelled"
        done = await _until_finished(desk, bob)
        assert done.status == "done" and len(await queue.fetch(done.stems[0])) > 10_000
    finally:
        await board.close()


async def test_a_job_stopped_by_anothers_cancel_runs_again_for_those_still_waiting(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    """The worker saw Alice's cancel and stopped just as Bob joined: Bob still gets his stems."""
    song = tmp_path / "song.wav"
    ffmpeg("-i", f"file:{ROCK / 'mixture.flac'}", "-t", "2", f"file:{song}")
    settings = Settings(redis_url=redis_url)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        desk = JobDesk(settings, board, "test")
        stems = parse_stems("vocals")
        delivery = Delivery(platform="test", job_id="", chat_id="chat-bob", user_id="bob")
        bob = (await desk.accept(Song(song.read_bytes(), "song.wav"), stems, "mp3", delivery)).delivery
        # The stop flag as the worker read it in the instant before Bob joined (the race itself).
        assert await queue.cancel(bob.job_id)
        worker = WorkerProcess(bench_env(redis_url, work_tmp), tmp_path / "w.log").start()
        worker_factory.append(worker)
        stopped = await queue.wait_result(bob.job_id, timeout_s=90)
        assert stopped.status == "cancelled"
        done = await _until_finished(desk, bob.id)
        assert done.status == "done" and len(await queue.fetch(done.stems[0])) > 10_000
    finally:
        await board.close()


# --- N5: the artifact budget never evicts stems before their chats fetch them -------------

FOUR_WAV = "vocals,drums,bass,other"  # with the benchmark engine: four copies of the input


def wav_songs(tmp_path: Path, count: int) -> list[bytes]:
    """`count` different 3 s WAVs of 529 kB each."""
    out = []
    for i in range(count):
        path = tmp_path / f"song{i}.wav"
        ffmpeg("-ss", f"{i * 0.3}", "-i", f"file:{ROCK / 'mixture.flac'}", "-t", "3", "-ac", "2", f"file:{path}")
        out.append(path.read_bytes())
    return out


async def test_stems_outlive_a_crowded_budget_until_fetched(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    songs = wav_songs(tmp_path, 6)
    # 7 MB: room for the inputs and stems (2.6 MB a job) of two jobs at once, not six.
    settings = Settings(redis_url=redis_url, artifact_budget_mb=7, user_rate="100/minute", chat_rate="100/minute")
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        desk = JobDesk(settings, board, "test")
        accepted, refused = [], 0
        for i, data in enumerate(songs):
            delivery = Delivery(platform="test", job_id="", chat_id=f"c{i}", user_id=f"u{i}")
            try:
                done = await desk.accept(Song(data, f"song{i}.wav"), parse_stems(FOUR_WAV), "wav", delivery)
                accepted.append(done.delivery.job_id)
            except StorageFull:
                refused += 1
        assert len(accepted) >= 2 and refused >= 1, (len(accepted), refused)
        env = bench_env(redis_url, work_tmp) | {"STEMBOT_ARTIFACT_BUDGET_MB": "7"}
        worker_factory.append(WorkerProcess(env, tmp_path / "w.log").start())
        results = [await queue.wait_result(job_id, timeout_s=90) for job_id in accepted]
        assert [r.status for r in results] == ["done"] * len(accepted)
        # Fetched only now, all at once, as delivery loops that fell behind would.
        fetched = [len(await queue.fetch(s)) for r in results for s in r.stems]
        assert fetched == [len(songs[0])] * 4 * len(accepted)
    finally:
        await board.close()


async def test_a_job_larger_than_the_budget_is_refused_up_front(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    """Four WAV stems of 2.1 MB under a 1.5 MB budget: one message at once, in a bot and in
    `stembot enqueue`; before, the job evicted its own stems and enqueue died on a traceback."""
    (song,) = wav_songs(tmp_path, 1)
    settings = Settings(redis_url=redis_url, artifact_budget_mb=1.5)
    board = await Board.connect(settings)
    try:
        desk = JobDesk(settings, board, "test")
        delivery = Delivery(platform="test", job_id="", chat_id="c", user_id="u")
        with pytest.raises(TooLarge, match="more than I can keep at once"):
            await desk.accept(Song(song, "song.wav"), parse_stems(FOUR_WAV), "wav", delivery)
    finally:
        await board.close()
    env = bench_env(redis_url, work_tmp) | {"STEMBOT_ARTIFACT_BUDGET_MB": "1.5"}
    worker_factory.append(WorkerProcess(env, tmp_path / "w.log").start())
    done = run_stembot(
        "enqueue", str(tmp_path / "song0.wav"), "--stems", FOUR_WAV, "--format", "wav", "--wait",
        "-o", str(tmp_path / "out"), env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "stembot: These stems would come to about 2.1 MB, more than I can keep at once (1.5 MB). Ask for fewer "
        "stems, a shorter section, or a compressed format such as mp3."
    ]


async def test_a_job_never_evicts_its_own_stems(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    """2.1 MB of stems and the 0.5 MB input, pinned while the job runs, under a 2.5 MB budget:
    before, storing the last stem evicted the first."""
    (song,) = wav_songs(tmp_path, 1)
    settings = Settings(redis_url=redis_url, artifact_budget_mb=2.5)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        delivery = Delivery(platform="test", job_id="", chat_id="c", user_id="u")
        accepted = await JobDesk(settings, board, "test").accept(
            Song(song, "song.wav"), parse_stems(FOUR_WAV), "wav", delivery
        )
        env = bench_env(redis_url, work_tmp) | {"STEMBOT_ARTIFACT_BUDGET_MB": "2.5"}
        worker_factory.append(WorkerProcess(env, tmp_path / "w.log").start())
        result = await queue.wait_result(accepted.delivery.job_id, timeout_s=90)
        assert result.status == "done"
        assert [len(await queue.fetch(s)) for s in result.stems] == [len(song)] * 4
    finally:
        await board.close()


# --- item 5: first come, first served, whatever the clock says ----------------------------


async def test_jobs_submitted_in_the_same_millisecond_keep_their_order(
    board: Board, rock_short: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arq scores a job by the millisecond it is enqueued in, and orders ties by id; here
    every job is enqueued in one millisecond, as bursts of users are on a fast host."""
    import arq.connections

    monkeypatch.setattr(arq.connections, "timestamp_ms", lambda: 1_800_000_000_000)
    queue = board.jobs
    ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
    stems = ("vocals", "drums", "bass", "other", "vocals drums", "bass other", "drums bass")
    jobs = []
    for i, spec in enumerate(stems):
        request = SeparationRequest(
            input=ref, stems=spec, model="htdemucs", requester=Requester(platform="test", user_id=str(i))
        )
        jobs.append((await queue.submit(request)).job_id)
    queued = await raw_redis(board.settings.redis_url).zrange(board.settings.queue_name, 0, -1)
    assert [m.decode() for m in queued] == jobs
    assert [await board.workers.position(j) for j in jobs] == list(range(1, len(jobs) + 1))


# --- item 5: ETAs from the workers' measured rates; no worker, no promise -----------------


@pytest.mark.parametrize(
    ("position", "slots", "running", "ahead", "running_audio", "throughput", "expected"),
    [
        (None, 2, 0, 0.0, 0.0, 4.0, None),  # not queued
        (1, 0, 0, 0.0, 0.0, 4.0, None),  # no live worker: nothing to promise
        (1, 2, 1, 0.0, 60.0, 4.0, 0.0),  # an idle slot takes it at once
        (2, 2, 0, 30.0, 0.0, 4.0, 0.0),
        (1, 1, 1, 0.0, 60.0, 4.0, 7.5),  # half of the running song's 60 s at 4 audio-s/s
        (3, 1, 1, 90.0, 60.0, 4.0, 30.0),  # and the 90 s waiting ahead
        (3, 2, 2, 90.0, 60.0, 0.0, None),  # rates not measured yet
    ],
)
def test_estimate_wait_by_rate(
    position: int | None,
    slots: int,
    running: int,
    ahead: float,
    running_audio: float,
    throughput: float,
    expected: float | None,
) -> None:
    assert estimate_wait_by_rate(position, slots, running, ahead, running_audio, throughput) == expected


async def test_the_eta_counts_the_songs_ahead_by_the_workers_rates(
    board: Board, redis_url: str, rock_short: Path
) -> None:
    queue, raw = board.jobs, raw_redis(redis_url)
    ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
    lengths = {"vocals": 60.0, "drums": 120.0, "bass": 30.0, "other": 90.0}
    jobs = []
    for stems, audio_s in lengths.items():
        request = SeparationRequest(input=ref, stems=stems, model="htdemucs", requester=Requester(platform="test"))
        jobs.append((await queue.submit(request, audio_s=audio_s)).job_id)
    for job_id in jobs:
        await queue.set_progress(Progress(job_id=job_id, stage=Stage.queued))
    # The slot times say 10 s a job; the songs are minutes long: the rates must win.
    await board.workers.record_cycle(10)
    await board.workers.announce("host-a:1", 1, [], 30)
    await board.workers.announce("host-b:2", 1, [], 30)
    await board.workers.record_rate("host-a:1", 30.0, 60.0)  # 0.5 s of work per s of audio: 2 audio-s/s
    await board.workers.record_rate("host-b:2", 30.0, 120.0)  # 0.25: 4 audio-s/s, 6 in all
    for job_id in jobs[:2]:  # as a worker does when it takes a job
        await raw.set(in_progress_key_prefix + job_id, b"1")
        await board.jobs.started(job_id, int(await raw.zscore(board.settings.queue_name, job_id) or 0))
    third, fourth = [await queue.progress(j) for j in jobs[2:]]
    assert third is not None and fourth is not None
    assert (third.queue_position, fourth.queue_position) == (1, 2)
    assert third.eta_s == pytest.approx((60 + 120) / 2 / 6)  # half of the running songs
    assert fourth.eta_s == pytest.approx((30 + (60 + 120) / 2) / 6)  # and the 30 s song ahead
    assert status_line(third, "Song") == "⏳ Song: queued (position 1, about 15 s)"


async def test_with_no_worker_online_the_status_says_so(board: Board, rock_short: Path) -> None:
    queue = board.jobs
    ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
    request = SeparationRequest(input=ref, stems="vocals", model="htdemucs", requester=Requester(platform="test"))
    job_id = (await queue.submit(request, audio_s=3.0)).job_id
    await queue.set_progress(Progress(job_id=job_id, stage=Stage.queued))
    await board.workers.record_cycle(5)  # workers were here before
    await board.workers.announce("gone:1", 1, [], 0.01)  # and the last one's presence lapsed
    await asyncio.sleep(0.05)
    progress = await queue.progress(job_id)
    assert progress is not None and progress.eta_s is None
    text = "⏳ Song: no worker is online right now; your song is queued (position 1)"
    assert status_line(progress, "Song") == text


async def test_a_worker_measures_its_own_rate(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    """The benchmark engine works 0.5 s per second of audio: no finished job can show less."""
    (song,) = wav_songs(tmp_path, 1)
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        ref = await queue.store_input(song, "song.wav")
        request = SeparationRequest(input=ref, stems="vocals", model="htdemucs", requester=Requester(platform="test"))
        job_id = (await queue.submit(request, audio_s=3.0)).job_id
        env = bench_env(redis_url, work_tmp) | {"STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND": "0.5"}
        worker_factory.append(WorkerProcess(env, tmp_path / "w.log").start())
        assert (await queue.wait_result(job_id, timeout_s=90)).status == "done"
        rates = await board.workers.rates()
        assert len(rates) == 1 and 0.5 <= next(iter(rates.values())) < 30
        assert await board.workers.expected_audio(job_id) is None  # forgotten once done
    finally:
        await board.close()


async def test_reservations_of_finished_or_lapsed_jobs_are_dropped(redis_url: str) -> None:
    from arq.constants import result_key_prefix

    from core.board.room import Room

    settings = Settings(redis_url=redis_url, result_ttl_s=60)
    client = redis.asyncio.Redis.from_url(redis_url)
    room = Room(client, settings)
    try:
        assert await room.reserve("a", 1000) and await room.reserve("b", 500)
        assert not await room.reserve("a", 9999)  # a second requester joining: held once
        assert await room.reserved_bytes() == 1500
        await client.set(result_key_prefix + "a", b"x")  # "a" finished; its worker died before giving it back
        assert await room.reserved_bytes() == 500
        await client.hset("stembot:reserved", "b", "500:1")  # lapsed long ago
        assert await room.reserved_bytes() == 0
    finally:
        await client.aclose()


async def test_both_bots_say_when_no_worker_is_online(redis_url: str, botapi: Any, tmp_path: Path) -> None:
    """No worker runs: each bot's status says so, in the same words, instead of an ETA that
    never comes true (before: "queued (position 1, about 5 s)" for minutes)."""
    clip = make_clip(ROCK / "mixture.flac", tmp_path / "rock.flac", seconds=3)
    redis.Redis.from_url(redis_url).set("stembot:stats:cycle_seconds", "5")  # workers were here once
    telegram = await start_bot(botapi, redis_url)
    env = sim_env(create_bot(Settings(redis_url=redis_url)))
    await env.start()
    try:
        said = "⏳ rock: no worker is online right now; your song is queued (position 1)"
        botapi.message(DM, ALICE, audio=_audio(botapi, clip), caption="/split vocals")

        def texts() -> list[str]:
            return [str(c.params.get("text", "")) for c in botapi.sent("sendMessage") + botapi.sent("editMessageText")]

        await botapi.wait_for(lambda: [t for t in texts() if said in t], timeout=60)
        assert not [t for t in texts() if "about" in t]
        guild = env.create_guild("band")
        channel = guild.create_text_channel("music")
        alice = guild.add_member(env.create_user("alice"))
        asked = await alice.slash(channel, "split", file=("rock.flac", clip.read_bytes()), stems="drums")
        second = said.replace("position 1", "position 2")  # behind Alice's Telegram song
        await drive(env, lambda: asked.response is not None and second in asked.response.content, timeout=60)
    finally:
        await env.shutdown()
        await stop_bot(telegram)


async def test_stems_are_unpinned_once_every_chat_has_them(
    redis_url: str, tmp_path: Path, work_tmp: Path, worker_factory: list[WorkerProcess]
) -> None:
    """The delivery grace is a cap: once the last chat waiting has its stems, the budget may
    take them (else a busy hour of results would fill it for STEMBOT_RESULT_PIN_S)."""
    (song,) = wav_songs(tmp_path, 1)
    settings = Settings(redis_url=redis_url)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        desk = JobDesk(settings, board, "test")
        ids = []
        for user in ("alice", "bob"):  # the same song: one job, two chats
            delivery = Delivery(platform="test", job_id="", chat_id=f"chat-{user}", user_id=user)
            ids.append((await desk.accept(Song(song, "song.wav"), parse_stems("vocals"), "wav", delivery)).delivery.id)
        worker_factory.append(WorkerProcess(bench_env(redis_url, work_tmp), tmp_path / "w.log").start())
        store = queue.store
        assert isinstance(store, RedisArtifactStore)
        for delivery_id in ids:
            assert (await _until_finished(desk, delivery_id)).status == "done"
        # The one stem, for its two chats (the input's pin goes as the worker lets go of the job).
        deadline = time.monotonic() + 30
        while await store.pinned_bytes() != len(song) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await store.pinned_bytes() == len(song)
        alice, bob = [await desk.book.get(i) for i in ids]
        assert alice is not None and bob is not None
        await desk.book.finish(alice)
        assert await store.pinned_bytes() == len(song)  # Bob has not got it yet
        await desk.book.finish(bob)
        assert await store.pinned_bytes() == 0
    finally:
        await board.close()
