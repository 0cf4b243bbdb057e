"""core.frontend's one delivery loop, through a small in-memory `Frontend` (a chat that keeps
what it was shown), with a real Redis and, where a job must finish, a real worker process
(the benchmark engine: its stems are copies of the input, a known answer)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.board import Board
from core.deliveries import Delivery
from core.desk import EDIT_EVERY_S, JobDesk, Song, Upload
from core.frontend import Button, DeliveryLoop
from core.jobs import Progress, Stage
from core.settings import Settings
from core.stems import parse_stems
from testkit import WorkerProcess, read_audio, s3_settings, stembot_env

pytestmark = pytest.mark.timeout(300)


@dataclass
class Sent:
    text: str
    files: list[Upload]
    buttons: list[Button]


@dataclass
class Chat:
    """A `Frontend` that keeps everything it is asked to show."""

    statuses: list[tuple[str, list[str]]] = field(default_factory=list)  # (text, button actions)
    told: list[str] = field(default_factory=list)
    results: list[Sent] = field(default_factory=list)

    async def edit_status(self, delivery: Delivery, text: str, buttons: Sequence[Button]) -> None:
        self.statuses.append((text, [b.action for b in buttons]))

    async def tell(self, delivery: Delivery, text: str) -> None:
        self.told.append(text)

    async def send_result(
        self, delivery: Delivery, text: str, files: Sequence[Upload], buttons: Sequence[Button]
    ) -> list[str | None]:
        self.results.append(Sent(text, list(files), list(buttons)))
        return [f"id-of-{f.filename}" for f in files]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def board(redis_url: str) -> AsyncIterator[Board]:
    board = await Board.connect(Settings(redis_url=redis_url))
    yield board
    await board.close()


def chat_of(user: str) -> Delivery:
    return Delivery(platform="test", job_id="", chat_id=f"chat-{user}", user_id=user, status_message_id="1")


async def the_one_pending(desk: JobDesk) -> Delivery:
    """As each pass of the loop reads it: from Redis, with what earlier passes saved."""
    [delivery] = await desk.book.pending()
    return delivery


async def test_status_edits_are_throttled_and_carry_cancel(board: Board, rock_short: Path) -> None:
    desk = JobDesk(board.settings, board, "test")
    song = Song(rock_short.read_bytes(), "rock.flac")
    accepted = await desk.accept(song, parse_stems("vocals"), "flac", chat_of("a"))
    job_id = accepted.delivery.job_id
    chat, clock = Chat(), Clock()
    loop = DeliveryLoop(desk, chat, poll_s=0.1, clock=clock)

    async def tick_at(t: float, percent: float | None = None) -> None:
        clock.now = 1_000_000.0 + t
        if percent is not None:  # as the worker reports it
            await board.jobs.set_progress(Progress(job_id=job_id, stage=Stage.separating, percent=percent))
        await loop.advance(await the_one_pending(desk))

    await tick_at(0)
    await tick_at(1)  # nothing new
    await tick_at(1.5, 10)  # new, but too soon after the last edit
    await tick_at(EDIT_EVERY_S)  # now it is shown
    await tick_at(EDIT_EVERY_S + 1, 20)
    await tick_at(EDIT_EVERY_S + 2, 30)
    await tick_at(2 * EDIT_EVERY_S + 1)  # only the latest is shown
    await tick_at(10 * EDIT_EVERY_S)  # nothing new however long it waits
    texts = [text for text, _ in chat.statuses]
    assert len(texts) == 3 and "queued" in texts[0], texts
    assert texts[1:] == ["🎛 rock: separating 10%", "🎛 rock: separating 30%"]
    assert all(actions == ["cancel"] for _, actions in chat.statuses)
    assert chat.told == [] and chat.results == []


async def test_a_cancelled_request_is_told_once(board: Board, rock_short: Path) -> None:
    desk = JobDesk(board.settings, board, "test")
    accepted = await desk.accept(Song(rock_short.read_bytes(), "rock.flac"), parse_stems("drums"), "mp3", chat_of("a"))
    assert await desk.cancel(accepted.delivery.id, "b") == "Only the person who asked can cancel this."
    assert await desk.cancel(accepted.delivery.id, "a") == "Cancelling…"
    chats = [Chat(), Chat()]  # two bot processes walk the same deliveries
    loops = [DeliveryLoop(desk, chat, poll_s=0.1) for chat in chats]
    for _ in range(3):  # a pass of both, as their loops make it
        pending = await desk.book.pending()
        await asyncio.gather(*(loop.advance(delivery) for loop in loops for delivery in pending))
    assert sorted(len(c.told) for c in chats) == [0, 1]
    assert [t for c in chats for t in c.told] == ["✖️ rock: cancelled."]
    assert all(c.results == [] for c in chats)
    assert await desk.book.pending() == []


def bench_worker(redis_url: str, work_tmp: Path, log: Path, **extra: str) -> WorkerProcess:
    """A worker whose "separation" copies the input as each stem, in a fraction of a second."""
    env = stembot_env(
        STEMBOT_REDIS_URL=redis_url,
        TMPDIR=str(work_tmp),
        STEMBOT_ENGINE="benchmark",
        STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND="0.01",
        STEMBOT_JOB_HEARTBEAT_S="1",
        **extra,
    )
    worker = WorkerProcess(env, log).start()
    worker.wait_ready()
    return worker


async def test_files_are_sent_once_and_again_by_their_ids(
    board: Board, redis_url: str, work_tmp: Path, tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    worker_factory.append(bench_worker(redis_url, work_tmp, tmp_path / "w.log"))
    desk = JobDesk(board.settings, board, "test")
    song = Song(rock_short.read_bytes(), "Rock Song.flac")
    first = await desk.accept(song, parse_stems("vocals drums"), "flac", chat_of("a"))
    await board.jobs.wait_result(first.delivery.job_id, timeout_s=120)
    chats = [Chat(), Chat()]  # two processes, or one before and after a restart
    loops = [DeliveryLoop(desk, chat, poll_s=0.1) for chat in chats]
    pending = await the_one_pending(desk)
    await asyncio.gather(*(loop.advance(pending) for loop in loops))
    [sender] = [c for c in chats if c.results]
    [sent] = sender.results
    assert [f.filename for f in sent.files] == ["Rock Song - vocals.flac", "Rock Song - drums.flac"]
    assert sent.text.startswith("✅ Rock Song: vocals, drums (htdemucs")
    # Under a result in the song's own key and tempo: a step either way of each (render.follow_ups).
    assert [(b.label, b.action, b.delivery_id, b.change) for b in sent.buttons] == [
        ("Key −1", "again", pending.id, "key-1"),
        ("Key +1", "again", pending.id, "key+1"),
        ("Tempo 90 %", "again", pending.id, "tempo-10"),
        ("Tempo 110 %", "again", pending.id, "tempo+10"),
    ]
    for file in sent.files:  # the benchmark engine's stems are the input itself
        path = tmp_path / file.filename
        path.write_bytes(file.data)
        assert (read_audio(path) == read_audio(rock_short)).all()
    restarted = Chat()
    await DeliveryLoop(desk, restarted, poll_s=0.1).tick()
    assert restarted == Chat() and await desk.book.pending() == []

    again = await desk.accept(song, parse_stems("vocals drums"), "flac", chat_of("a"))
    assert again.state == "cached"
    await DeliveryLoop(desk, restarted, poll_s=0.1).advance(await the_one_pending(desk))
    [resent] = restarted.results
    assert [(f.filename, f.ref, f.data) for f in resent.files] == [
        (f.filename, f"id-of-{f.filename}", b"") for f in sent.files
    ]


async def test_files_too_large_for_the_chat_come_as_links(
    s3_url: str, redis_url: str, work_tmp: Path, tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    s3 = s3_settings(s3_url)
    env = {f"STEMBOT_{k.upper()}": str(v) for k, v in s3.items()}
    worker_factory.append(bench_worker(redis_url, work_tmp, tmp_path / "w.log", **env))
    board = await Board.connect(Settings(redis_url=redis_url, **s3))  # type: ignore[arg-type]
    try:
        desk = JobDesk(board.settings, board, "test")
        song = Song(rock_short.read_bytes(), "big.flac")
        accepted = await desk.accept(song, parse_stems("vocals"), "flac", chat_of("a"), upload_limit=10_000)
        await board.jobs.wait_result(accepted.delivery.job_id, timeout_s=120)
        chat = Chat()
        await DeliveryLoop(desk, chat, poll_s=0.1).advance(await the_one_pending(desk))
    finally:
        await board.close()
    [sent] = chat.results
    assert sent.files == []
    head, _, link = sent.text.partition("Too large to upload here; download within")
    assert head.startswith("✅ big: vocals")
    url = link.split("big - vocals.flac: ", 1)[1].strip()
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == rock_short.read_bytes()  # the stem as stored: the input, copied
