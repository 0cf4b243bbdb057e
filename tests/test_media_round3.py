"""Issue 21, media items: times shown, CPU caps, sections, probing, kills, scratch, tags (by table where pure)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
import redis
from telegram.ext import Application

from core.board import Board
from core.desk.job_desk import Finished, JobDesk, settle
from core.domain.clock import clock
from core.domain.deliveries import Delivery
from core.domain.errors import InvalidCommand, NotAudio, QuotaExceeded, StembotError, TooLong, WorkerFailed
from core.domain.jobs import ErrorInfo, JobResult, Requester, SeparationRequest, Song
from core.domain.render import RenderOptions, check_section, describe, make_options, split_render_words
from core.domain.stems import parse_stems
from core.media.audio import SAMPLE_RATE, TOO_DEMANDING, UNREADABLE, AudioInfo, probe, stream_decode, too_long_error
from core.media.ffmpeg import cpu_cap_s
from core.settings import Settings
from testkit import ROOT, WorkerProcess, run_stembot, stembot_env, tags
from testkit.botapi import BotApiServer
from testkit.tgbot import ALICE, DM
from testkit.tgbot import audio as _audio
from worker.pipeline import _encoder_sandbox
from worker.scratch import owned_dir, remove_orphans


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0:00"),
        (0.04, "0:00"),
        (0.05, "0:00.1"),
        (0.96, "0:01"),
        (1.0, "0:01"),
        (5.5, "0:05.5"),
        (59.94, "0:59.9"),
        (59.96, "1:00"),
        (119.99, "2:00"),
        (65.25, "1:05.3"),
        (3599.96, "1:00:00"),
        (3661.5, "1:01:01.5"),
        (36000.0, "10:00:00"),
    ],
)
def test_clock_with_tenths(seconds: float, shown: str) -> None:
    assert clock(seconds) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.4, "0:00"),
        (0.5, "0:01"),
        (0.96, "0:01"),
        (59.5, "1:00"),
        (599.6, "10:00"),
        (3599.5, "1:00:00"),
        (7325.0, "2:02:05"),
    ],
)
def test_clock_in_whole_seconds(seconds: float, shown: str) -> None:
    assert clock(seconds, tenths=False) == shown


def test_times_in_messages_carry() -> None:
    """The two defects the red team saw, through the messages that showed them."""
    assert describe(make_options(start=0.96, end=119.96)) == "0:01\u20132:00"
    assert "1:00:00" in str(too_long_error(3599.7, 1800))


@pytest.mark.parametrize(
    ("base_s", "audio_s", "per_min", "cap_s"),
    [
        (600, 0.0, 24, 600),  # nothing to stretch: the flat cap
        (600, 240.0, 24, 600),  # a 4-minute song needs 96 s: the flat cap holds
        (600, 25 * 60.0, 24, 600),  # 25 minutes need exactly 600
        (600, 30 * 60.0, 24, 720),
        (600, 60 * 60.0, 24, 1440),  # the hour-long input: 720 CPU-s measured, twice that allowed
        (600, 60 * 60.0 + 1, 24, 1441),  # rounded up, never down
        (30, 60.0, 12, 30),
        (10, -5.0, 24, 10),
    ],
)
def test_cpu_cap_grows_with_the_audio(base_s: int, audio_s: float, per_min: float, cap_s: int) -> None:
    assert cpu_cap_s(base_s, audio_s, per_min) == cap_s


@pytest.mark.parametrize(
    ("options", "frames", "cap_s"),
    [
        (RenderOptions(), 3600 * SAMPLE_RATE, 600),  # no rubberband: the flat cap
        (RenderOptions(key=-2), 3600 * SAMPLE_RATE, 1440),
        (RenderOptions(tempo=50), 3600 * SAMPLE_RATE, 2880),  # twice as long once slowed down
        (RenderOptions(tempo=150), 3600 * SAMPLE_RATE, 1440),
        (RenderOptions(key=1), 60 * SAMPLE_RATE, 600),
        (RenderOptions(key=1), None, 1440),  # length not known yet: the longest song taken
    ],
)
def test_render_encoders_get_a_cap_for_their_length(options: RenderOptions, frames: int | None, cap_s: int) -> None:
    settings = Settings(max_duration_s=3600, ffmpeg_max_cpu_s=600)
    assert _encoder_sandbox(settings, options, frames).cpu_s == cap_s


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (None, 0.00001, "is too short"),  # end-only: 0:00-0:00
        (None, 0.01, "is too short"),
        (None, "0:00.9", "is too short"),
        (0.0, 0.5, "is too short"),
        (5.0, 5.5, "is too short"),
        (5.0, 4.0, "ends before it starts"),
    ],
)
def test_every_section_lasts_a_second(start: float | None, end: float | str, message: str) -> None:
    with pytest.raises(InvalidCommand, match=message):
        make_options(start=start, end=end)
    with pytest.raises(ValueError, match="at least a second"):
        RenderOptions(start_s=start or None, end_s=end if isinstance(end, float) and end > 0 else 0.5)


def test_an_end_only_word_is_a_section_too() -> None:
    with pytest.raises(InvalidCommand, match="too short"):
        split_render_words(["vocals", "-0.5"])
    assert split_render_words(["-1"])[1] == RenderOptions(end_s=1.0)


@pytest.mark.parametrize(
    ("start", "end", "song_s", "refused"),
    [
        (None, None, 3.0, False),  # no section: any song
        (None, None, 0.5, False),
        (2.0, None, 3.0, False),  # start-only, a second left
        (2.5, None, 3.0, True),  # start-only, half a second left
        (5.0, None, 3.0, True),  # past the end
        (None, 1.0, 3.0, False),
        (1.0, 99.0, 3.0, False),  # an end past the song: cut to it, two seconds
        (2.5, 99.0, 3.0, True),
        (2.5, None, None, False),  # length unknown yet: only the section's own length
        (0.0, 1.0, 0.5, True),  # a second asked of a half-second song
    ],
)
def test_check_section(start: float | None, end: float | None, song_s: float | None, refused: bool) -> None:
    options = RenderOptions(start_s=start, end_s=end)
    if refused:
        with pytest.raises(InvalidCommand, match="pick a section inside it, at least a second long"):
            check_section(options, song_s)
    else:
        check_section(options, song_s)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--end", "0.00001"), "The section 0:00-0:00 is too short"),
        (("--end", "0.01", "--key", "12", "--tempo", "50"), "The section 0:00-0:00 is too short"),
        (("--start", "2.5"), "The song is 0:03 long: pick a section inside it, at least a second long"),
    ],
)
def test_sections_under_a_second_are_refused_by_the_cli(
    tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """Once, with the user-error status and nothing written (they wrote an unreadable file,
    or failed in ffmpeg and were retried)."""
    out = tmp_path / "o"
    done = run_stembot("separate", str(rock_short), "--stems", "vocals", *args, "-o", str(out), env=tiny_env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(message) == 1 and "Traceback" not in done.stderr
    assert not list(out.glob("*"))


def _tagged_mp3(path: Path, seconds: float, **tags: str) -> Path:
    """An MP3 with ID3 tags of any size (an ffmetadata file, not argv, carries them)."""
    meta = path.with_suffix(".meta")
    meta.write_text(";FFMETADATA1\n" + "".join(f"{k}={v}\n" for k, v in tags.items()))
    make = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=d={seconds}", "-i", str(meta)]
    subprocess.run([*make, "-map_metadata", "1", "-c:a", "libmp3lame", "-b:a", "64k", str(path)], check=True)
    meta.unlink()
    return path


def test_a_huge_comment_is_not_read_into_the_process(tmp_path: Path) -> None:
    """The red team's 95 MB ID3 comment, at 24 MB: the bot's process does not hold it (it
    read all of ffprobe's JSON, about three times the tag, before). Python's own allocations
    are counted; a process's peak RSS would hide them under whatever came before."""
    song = _tagged_mp3(tmp_path / "c.mp3", 2, title="Song", comment="x" * 24_000_000)
    tracemalloc.start()
    try:
        info = probe(song)
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert info.duration_s is not None and abs(info.duration_s - 2) < 0.1 and info.title == "Song"
    assert peak_mb < 8, f"probing took {peak_mb:.0f} MB"


def test_a_huge_title_is_left_out(tmp_path: Path) -> None:
    """Tags past what probe reads: the song is still taken, untitled, its length known."""
    info = probe(_tagged_mp3(tmp_path / "t.mp3", 2, title="y" * 2_000_000, artist="Someone"))
    assert info.title is None and info.artist is None
    assert info.duration_s is not None and abs(info.duration_s - 2) < 0.1
    assert probe(_tagged_mp3(tmp_path / "s.mp3", 2, title="  Short    title ", artist="A")).title == "Short title"


@pytest.mark.parametrize(
    "answer",
    ['{"streams": [{"codec_type": "aud', "[1, 2]", '{"streams": "audio"}', "\\xff\\xfe not json"],
    ids=["truncated", "a-list", "odd-shape", "not-utf8"],
)
def test_an_unreadable_ffprobe_answer_is_not_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """Whatever ffprobe prints (here a stand-in on PATH), probe refuses with one message, never a traceback."""
    song = _tagged_mp3(tmp_path / "a.mp3", 1)
    _fake_ffprobe(tmp_path, monkeypatch, f"printf '{answer}'")
    with pytest.raises(NotAudio) as refused:
        probe(song)
    assert refused.value.user_message == UNREADABLE


def _fake_ffprobe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """A stand-in ffprobe first on PATH (run through the real sandbox), doing `script`."""
    fake = tmp_path / "bin" / "ffprobe"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")


@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        ("kill -KILL $$", None),  # the OOM killer, an operator: the host's failure
        ("kill -XCPU $$", TOO_DEMANDING),  # RLIMIT_CPU's soft limit: the file's demand
        ("echo 'Cannot allocate memory' >&2; exit 1", TOO_DEMANDING),  # RLIMIT_AS
        ("echo 'Invalid data found when processing input' >&2; exit 1", UNREADABLE),
    ],
    ids=["sigkill", "sigxcpu", "enomem", "invalid"],
)
def test_a_child_killed_from_outside_is_not_blamed_on_the_song(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, refusal: str | None
) -> None:
    song = _tagged_mp3(tmp_path / "a.mp3", 1)
    _fake_ffprobe(tmp_path, monkeypatch, script)
    with pytest.raises(StembotError) as failed:
        probe(song)
    if refusal is None:
        assert isinstance(failed.value, WorkerFailed) and failed.value.retryable
        # a retryable error is never kept as the answer to the same song (core.board.jobs)
        assert ErrorInfo.from_exception(failed.value).to_exception().retryable
        assert "song" in failed.value.user_message and "try again" in failed.value.user_message
    else:
        assert isinstance(failed.value, NotAudio) and failed.value.user_message == refusal


def _children_named(name: str) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and stat.parent.joinpath("comm").read_text().strip() == name:
                pids.append(int(stat.parent.name))
    return pids


@pytest.mark.parametrize("duration_s", [None, 120.0], ids=["length-unknown", "length-known"])
def test_a_decoder_killed_mid_song_is_a_host_failure(tmp_path: Path, duration_s: float | None) -> None:
    """SIGKILL to the real decoder after its first block: neither a silently short song nor
    "truncated or damaged", both of which were kept as the song's answer."""
    song = tmp_path / "long.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=120", str(song)], check=True)
    info = AudioInfo(duration_s=duration_s, container="wav", codec="pcm_s16le", has_video=False)
    blocks = stream_decode(song, info, 600, block_s=1.0)
    with pytest.raises(WorkerFailed), contextlib.closing(blocks):
        next(blocks)
        (pid,) = _children_named("ffmpeg")
        os.kill(pid, signal.SIGKILL)
        for _ in range(1000):  # bounded: 120 blocks at most
            next(blocks)


HOLD_SCRATCH = """
import sys, time
from pathlib import Path
from worker.scratch import owned_dir
with owned_dir(Path(sys.argv[1]), "stembot-job-") as path:
    (path / "decoded.f32").write_bytes(b"0" * 4096)
    print(path, flush=True)
    time.sleep(120)
"""


def test_a_killed_workers_scratch_is_removed_whatever_its_pid(tmp_path: Path) -> None:
    """A worker SIGKILLed while holding its scratch, its directory named for a pid that is
    alive again (in a container, every worker is PID 1): the next worker's sweep removes it;
    a live worker's scratch, and one being made (no lock yet, live pid), are kept."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRATCH, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        # what a restarted container's PID 1 finds: the dead worker's pid in use again
        reused = held.rename(held.with_name(f"stembot-job-{os.getpid()}-{held.name.rsplit('-', 1)[1]}"))
        assert remove_orphans(tmp_path) == [] and (reused / "decoded.f32").exists()  # its owner lives
    finally:
        holder.kill()
        holder.wait()
    with owned_dir(tmp_path, "stembot-job-") as mine:
        unlocked = Path(tempfile.mkdtemp(prefix=f"stembot-job-{os.getpid()}-", dir=tmp_path))
        dead = Path(tempfile.mkdtemp(prefix=f"stembot-job-{2**22 + 1}-", dir=tmp_path))  # past pid_max's default
        assert sorted(remove_orphans(tmp_path)) == sorted([reused, dead])
        assert mine.is_dir() and unlocked.is_dir() and remove_orphans(tmp_path) == []
    assert not mine.exists() and sorted(p.name for p in tmp_path.iterdir()) == [unlocked.name]


def test_separate_offline_without_a_model_repo_says_what_to_set(tmp_path: Path, rock_short: Path) -> None:
    """No STEMBOT_MODEL_REPO, no cached weights, no way out (a proxy that refuses): one
    message naming the setting, after a line saying the model is being loaded."""
    offline = {"HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    env = stembot_env(HOME=str(tmp_path), TORCH_HOME=str(tmp_path / "torch"), **offline)
    done = run_stembot("separate", str(rock_short), "--stems", "vocals", "-o", str(tmp_path / "o"), env=env)
    assert done.returncode == 2, done.stderr
    assert "stembot: loading htdemucs" in done.stderr
    assert "set STEMBOT_MODEL_REPO to a folder holding the model's weights" in done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "o").glob("*"))


@pytest.mark.parametrize(
    ("covered_s", "charged_s", "longest_s", "extra_s", "refused"),
    [
        (200.0, 1200.0, 1200.0, -1000.0, False),  # stated no length: charged the most, refunded the rest
        (200.0, 30.0, 1200.0, 170.0, False),  # an ADTS header that said 30 s: the rest is charged
        (30.4, 30.0, 1200.0, 0.0, False),  # rounding is not charged
        (200.0, 0.0, 1200.0, 0.0, False),  # from cached sources: nothing was charged, nothing to settle
        (200.0, 120.0, 120.0, 0.0, True),  # a server's 2-minute limit, passed by a song that said less
        (1201.5, 1200.0, 1200.0, 0.0, True),
        (1200.9, 1200.0, 1200.0, 0.0, False),
    ],
)
def test_settle(covered_s: float, charged_s: float, longest_s: float, extra_s: float, refused: bool) -> None:
    verdict = settle(covered_s, charged_s, longest_s)
    assert verdict.extra_s == pytest.approx(extra_s)
    assert (verdict.refusal is not None) == refused
    if refused:
        assert isinstance(verdict.refusal, TooLong)


def _live_webm(path: Path, seconds: float) -> Path:
    """Opus in a WebM written as a live stream: its container states no length (ffprobe: N/A)."""
    make = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=d={seconds}:f=330"]
    subprocess.run([*make, "-c:a", "libopus", "-live", "1", "-f", "webm", str(path)], check=True)
    assert probe(path).duration_s is None
    return path


async def _finished(desk: JobDesk, delivery: Delivery) -> JobResult:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        step = await desk.step(delivery, time.time())
        if isinstance(step, Finished):
            return step.result
        await asyncio.sleep(0.2)
    raise TimeoutError("the job did not finish")


async def test_a_song_that_states_no_length_is_checked_and_charged_by_its_decoded_length(
    redis_url: str, tiny_worker: WorkerProcess, tmp_path: Path
) -> None:
    """The red team's live WebM: it was charged 0 s and passed a server's limit. Now it is
    charged the most it may be, refused before any work where that passes the daily minutes,
    refused on delivery where it is longer than the server allows, and otherwise charged what
    it really lasts."""
    settings = Settings(redis_url=redis_url, max_jobs_per_user=5, daily_minutes_per_user=30)
    board = await Board.connect(settings)
    try:
        desk = JobDesk(settings, board, "test")

        def chat(user: str) -> Delivery:
            return Delivery(platform="test", job_id="", chat_id="c", user_id=user)

        song6 = Song(_live_webm(tmp_path / "a.webm", 6).read_bytes(), "live.webm")
        # a server that takes songs of up to 3 s: accepted as at most 3 s, refused once decoded
        alice = (await desk.accept(song6, parse_stems("vocals"), "mp3", chat("alice"), None, 3)).delivery
        assert await desk.usage.used_s(desk.user_key("alice")) == 3
        refused = await _finished(desk, alice)
        assert refused.status == "failed" and refused.error is not None and refused.stems == []
        assert refused.error.message == "That is 0:06 long; the limit is 0:03. Send a shorter excerpt."
        # no such server: charged the bot's 20 minutes while queued, 5 s once decoded
        song5 = Song(_live_webm(tmp_path / "b.webm", 5).read_bytes(), "live.webm")
        bob = (await desk.accept(song5, parse_stems("vocals"), "mp3", chat("bob"))).delivery
        assert await desk.usage.used_s(desk.user_key("bob")) == settings.max_duration_s
        done = await _finished(desk, bob)
        assert done.status == "done" and len(done.stems) == 1
        assert abs(await desk.usage.used_s(desk.user_key("bob")) - 5) <= 0.5
        # 10 minutes a day: a song that may last 20 is refused before it is queued
        strict = JobDesk(Settings(redis_url=redis_url, daily_minutes_per_user=10), board, "test")
        song7 = Song(_live_webm(tmp_path / "c.webm", 7).read_bytes(), "live.webm")  # not cached: a model run
        with pytest.raises(QuotaExceeded):
            await strict.accept(song7, parse_stems("drums"), "mp3", chat("carol"))
    finally:
        await board.close()


def _scratch_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


async def test_the_output_bound_stops_the_encoders_not_only_the_store(
    tiny_env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    work_tmp: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    """Two minutes as four WAV stems (85 MB) under a 5 MB bound: refused with the bound's
    message, and the job's requested files never come near what they would have been (the red
    team saw 423 MB written before a 50 MB bound refused a job). The scratch space is sampled
    while the job runs: its decoded song (53 MB) and lossless sources are there too."""
    song = tmp_path / "five.flac"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=300:f=220", "-ac", "2", str(song)], check=True
    )
    worker = WorkerProcess(tiny_env | {"STEMBOT_MAX_JOB_OUTPUT_MB": "5"}, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        ref = await queue.store_input(song.read_bytes(), song.name)
        request = SeparationRequest(input=ref, stems="all", model="htdemucs", format="wav", requester=Requester())
        job = await queue.submit(request)
        peak_out = 0
        deadline = time.monotonic() + 240
        while (result := await queue.result(job.job_id)) is None:
            assert time.monotonic() < deadline, "the job did not finish"
            outs = [Path(d) / "out" for d in work_tmp.glob("stembot-job-*")]
            peak_out = max(peak_out, sum(_scratch_bytes(out) for out in outs))
            await asyncio.sleep(0.02)
        assert result.status == "failed" and result.error is not None and result.error.code == "too_large"
        assert "one request may make at most 5 MB" in result.error.message
        assert peak_out < 30_000_000, f"{peak_out / 1e6:.0f} MB of stems written under a 5 MB bound"
        assert list(work_tmp.iterdir()) == []
    finally:
        await board.close()


def _stored_results(redis_url: str, tmp_path: Path) -> list[dict[str, str]]:
    """The tags of every stem the store holds, as ffprobe reads them."""
    client = redis.Redis.from_url(redis_url)
    found = []
    for i, key in enumerate(sorted(client.keys("stembot:artifact:result:*"))):
        path = tmp_path / f"stored-{i}.{key.decode().rsplit('.', 1)[1]}"
        path.write_bytes(client.get(key) or b"")
        found.append(tags(path))
    client.close()
    return found


def test_enqueue_writes_its_own_requesters_names_into_the_tags(
    tiny_env: dict[str, str], tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    """Alice, then Bob with the same bytes: each file says whose song it is; the stored stem
    stays "song — vocals", and Bob's carries nothing of Alice."""
    worker = WorkerProcess(tiny_env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    files = {}
    for who in ("alice_secret_demo", "bob_song"):
        song = tmp_path / f"{who}.flac"
        shutil.copy(rock_short, song)
        out = tmp_path / f"out-{who}"
        done = run_stembot("enqueue", str(song), "--stems", "vocals", "--wait", "-o", str(out), env=tiny_env)
        assert done.returncode == 0, done.stderr
        [files[who]] = list(out.iterdir())
    alice, bob = tags(files["alice_secret_demo"]), tags(files["bob_song"])
    assert (alice["title"], alice["album"]) == ("alice_secret_demo \u2014 vocals", "alice_secret_demo")
    assert (bob["title"], bob["album"]) == ("bob_song \u2014 vocals", "bob_song")
    assert "alice" not in json.dumps(bob).lower() and "artist" not in bob
    [stored] = _stored_results(tiny_env["STEMBOT_REDIS_URL"], tmp_path)
    assert (stored["title"], stored["album"]) == ("song \u2014 vocals", "song")


async def test_telegram_delivers_files_tagged_for_their_requester(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tiny_worker: WorkerProcess,
    redis_url: str,
    rock_short: Path,
    tmp_path: Path,
) -> None:
    """Through PTB and the Bot API test server: Alice's audio has a title and performer, Bob's
    the same bytes and only a file name. What each receives is tagged with their own names."""
    alice_song = _audio(botapi, rock_short, file_name="a.flac", title="Alice Secret Demo", performer="Alice Band")
    botapi.message(DM, ALICE, audio=alice_song, caption="/split vocals")
    first = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    bob = {"id": 7, "is_bot": False, "first_name": "Bob"}
    bob_song = _audio(botapi, rock_short, file_name="bob_song.flac")
    botapi.message({"id": 7, "type": "private"}, bob, audio=bob_song, caption="/split vocals")
    both = await botapi.wait_for(lambda: len(botapi.sent("sendAudio")) == 2 and botapi.sent("sendAudio"), timeout=60)
    got = {}
    for who, call in (("alice", first[0]), ("bob", both[1])):
        path = tmp_path / f"{who}.mp3"
        path.write_bytes(call.files["audio"])
        got[who] = tags(path)
    assert got["alice"]["title"] == "Alice Secret Demo \u2014 vocals" and got["alice"]["artist"] == "Alice Band"
    assert got["alice"]["album"] == "Alice Secret Demo"
    assert (got["bob"]["title"], got["bob"]["album"]) == ("bob_song \u2014 vocals", "bob_song")
    assert "alice" not in json.dumps(got["bob"]).lower() and "artist" not in got["bob"]
    [stored] = _stored_results(redis_url, tmp_path)
    assert (stored["title"], stored["album"]) == ("song \u2014 vocals", "song")
