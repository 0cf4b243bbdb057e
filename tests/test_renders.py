"""One separation, many renders: real workers, real Redis, real ffmpeg.

Plumbing runs on the toy model (its output is noise, which is all the cache needs);
the key, tempo and section checks use the real htdemucs weights on short clips.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import redis

from core.board import Board
from core.board.jobs import JobQueue
from core.domain.jobs import JobResult, Requester, SeparationRequest
from core.domain.render import RenderOptions, rubberband
from core.domain.sources import entry_key
from core.settings import Settings
from testkit import SONGS, WorkerProcess, ffmpeg, make_clip, read_audio, run_stembot, stats_totals

pytestmark = pytest.mark.timeout(600)
RATE = 44100


def _snr(ref: np.ndarray, est: np.ndarray) -> float:
    n = min(ref.shape[-1], est.shape[-1])
    ref, est = ref[:, :n].astype(np.float64), est[:, :n].astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-20)))


def _enqueue(clip: Path, out: Path, env: dict[str, str], *args: str) -> tuple[Path, str]:
    done = run_stembot("enqueue", str(clip), "--wait", "-o", str(out), *args, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    files = [Path(line) for line in done.stdout.splitlines() if line.startswith(str(out))]
    assert len(files) == 1, done.stdout
    return files[0], done.stdout


def test_model_runs_once(
    tiny_env: dict[str, str], tiny_worker: WorkerProcess, redis_url: str, rock_short: Path, tmp_path: Path
) -> None:
    """Vocals, then karaoke, then drums+bass in FLAC: one model run; each later answer is
    what a separation from scratch gives, within the codec's tolerance."""
    vocals, said = _enqueue(rock_short, tmp_path / "a", tiny_env, "--stems", "vocals")
    assert "rendered from the cached separation" not in said
    karaoke, said = _enqueue(rock_short, tmp_path / "b", tiny_env, "--stems", "karaoke")
    assert "rendered from the cached separation" in said
    rhythm, said = _enqueue(rock_short, tmp_path / "c", tiny_env, "--stems", "drums+bass", "--format", "flac")
    assert "rendered from the cached separation" in said
    stats = stats_totals(redis_url)
    assert (stats["model_runs"], stats["cached_renders"]) == (1, 2)
    assert "from cached sources" in tiny_worker.log()

    # from scratch: the same song separated in a fresh process, cache or not
    scratch = tmp_path / "scratch"
    for stems, fmt in (("karaoke", "mp3"), ("drums+bass", "flac")):
        done = run_stembot(
            "separate", str(rock_short), "--stems", stems, "--format", fmt, "-o", str(scratch), env=tiny_env
        )
        assert done.returncode == 0, done.stderr
    assert _snr(read_audio(scratch / "rock.instrumental.mp3"), read_audio(karaoke)) > 60
    assert _snr(read_audio(scratch / "rock.drums+bass.flac"), read_audio(rhythm)) > 80
    assert read_audio(vocals).shape == read_audio(karaoke).shape


def _peak_hz(audio: np.ndarray) -> float:
    mono = audio.mean(0)[RATE : 3 * RATE]  # a stretch clear of the edges
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
    return float(np.fft.rfftfreq(mono.size, 1 / RATE)[int(np.argmax(spectrum))])


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tone") / "tone.flac"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=6", "-ac", "2", "-ar", str(RATE), str(path))
    return path


def test_key_and_tempo(real_worker: WorkerProcess, redis_url: str, tone: Path, tmp_path: Path) -> None:
    """A 440 Hz tone (every source summed, so the model's split does not matter): key −2
    puts the peak at 392 ± 2 Hz, key +12 doubles it, tempo 80 makes it 1.25× as long."""
    env = real_worker.env
    every = ("--stems", "drums+bass+other+vocals", "--format", "wav")
    original, _ = _enqueue(tone, tmp_path / "o", env, *every)
    lower, _ = _enqueue(tone, tmp_path / "k", env, *every, "--key", "-2")
    octave, _ = _enqueue(tone, tmp_path / "o12", env, *every, "--key", "+12")
    slower, _ = _enqueue(tone, tmp_path / "t", env, *every, "--tempo", "80")
    assert abs(_peak_hz(read_audio(original)) - 440) <= 2
    assert abs(_peak_hz(read_audio(lower)) - 392) <= 2
    assert abs(_peak_hz(read_audio(octave)) - 880) <= 2
    ratio = read_audio(slower).shape[-1] / read_audio(original).shape[-1]
    assert abs(ratio - 1.25) <= 0.0125, ratio
    assert "key \u22122" in lower.name or "key-2" in lower.name
    assert stats_totals(redis_url)["model_runs"] == 1


@pytest.mark.parametrize("keep_formants", [False, True])
def test_a_key_change_holds_a_note_steady(tone: Path, tmp_path: Path, keep_formants: bool) -> None:
    """The renders' rubberband filter on a 440 Hz tone at key −2: every 0.19 s stretch peaks at
    392 ± 1.5 Hz. Rubberband's default (crisp) transients made it warble from 387 to 396 Hz."""
    lower = tmp_path / "lower.wav"
    ffmpeg("-i", str(tone), "-af", str(rubberband(RenderOptions(key=-2), keep_formants)), str(lower))
    mono = read_audio(lower).mean(0)
    n = 8192
    peaks = [
        float(np.argmax(np.abs(np.fft.rfft(mono[i : i + n] * np.hanning(n), 8 * n)))) * RATE / (8 * n)
        for i in range(n, mono.size - 2 * n, n)
    ]
    assert max(abs(peak - 392.0) for peak in peaks) <= 1.5, peaks


@pytest.fixture(scope="module")
def song20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of a real song with vocals."""
    src = SONGS / "librosa_karissa_hobbs_lets_go_fishin.ogg"
    return make_clip(src, tmp_path_factory.mktemp("song") / "fishin.flac", seconds=20, extra=("-ss", "30"))


async def _run(queue: JobQueue, clip: Path, options: RenderOptions, fmt: str = "wav") -> tuple[JobResult, Path]:
    ref = await queue.store_input(clip.read_bytes(), clip.name)
    request = SeparationRequest(
        input=ref, stems="vocals", model="htdemucs", format=fmt, options=options, requester=Requester(platform="test")
    )
    submission = await queue.submit(request)
    result = await queue.wait_result(submission.job_id, timeout_s=300)
    assert result.status == "done", result.error
    out = clip.parent / f"{submission.job_id}.{fmt}"
    out.write_bytes(await queue.fetch(result.stems[0]))
    return result, out


async def test_section(real_worker: WorkerProcess, redis_url: str, song20: Path, tmp_path: Path) -> None:
    """`0:05-0:12` as WAV: 7.00 s to the sample, the model run on the section and its
    context only, and the same stretch as the whole song's separation within 15 dB SNR;
    once the whole song's sources are cached, a section is a trim of them."""
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        section = RenderOptions(start_s=5, end_s=12)
        cut, cut_path = await _run(queue, song20, section)
        assert not cut.from_cache
        assert cut.audio_seconds <= 7 + 2 * 4.0 + 0.01  # the section and its context, not 20 s
        whole, whole_path = await _run(queue, song20, RenderOptions())
        assert not whole.from_cache and abs(whole.audio_seconds - 20) < 0.1
        trimmed, trimmed_path = await _run(queue, song20, section, fmt="flac")
        assert trimmed.from_cache

        cut_audio, whole_audio = read_audio(cut_path), read_audio(whole_path)
        assert cut_audio.shape[-1] == 7 * RATE  # 7.00 s: ± 1 ms is ± 44 samples; it is exact
        stretch = whole_audio[:, 5 * RATE : 12 * RATE]
        snr = _snr(stretch, cut_audio)
        print(f"section against the whole song's separation: SNR {snr:.1f} dB")
        assert snr >= 15, snr
        assert _snr(stretch, read_audio(trimmed_path)) > 80  # a trim of the same sources

        cache = board.sources
        sha = hashlib.sha256(song20.read_bytes()).hexdigest()
        assert await cache.find(sha, "htdemucs", (0, None)) is not None
        assert await queue.store.exists(entry_key(sha, "htdemucs", (5 * RATE, 12 * RATE)))
    finally:
        await board.close()
    assert stats_totals(redis_url)["model_runs"] == 2


async def test_cache_is_bounded(redis_url: str, tmp_path: Path) -> None:
    """Past STEMBOT_SOURCES_MAX_MB the least recently used songs' sources go first."""
    from core.domain.sources import SourceSet

    settings = Settings(redis_url=redis_url, sources_max_mb=0.25)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        cache = board.sources
        blob = tmp_path / "vocals.flac"
        blob.write_bytes(b"x" * 100_000)
        sources = SourceSet({"vocals": blob}, 0, 1000)
        for name in ("a", "b"):
            assert await cache.put(entry_key(name, "m"), sources)
        assert await cache.find("a", "m", (0, None)) is not None  # a is used again: b is now the oldest
        await cache.fetch(*(await cache.find("a", "m", (0, None))), tmp_path)  # type: ignore[misc]
        await cache.put(entry_key("c", "m"), sources)
        assert await cache.find("b", "m", (0, None)) is None
        assert await cache.find("a", "m", (0, None)) is not None
        assert await cache.find("c", "m", (0, None)) is not None
        assert await cache.total_bytes() <= 250_000  # decimal MB, as every size stembot shows
        assert not await queue.store.exists("sources:b:m:vocals.flac")
        # a song whose sources alone are over the cap is not kept, and pushes nobody out
        huge = tmp_path / "huge.flac"
        huge.write_bytes(b"x" * 300_000)
        assert not await cache.put(entry_key("d", "m"), SourceSet({"vocals": huge}, 0, 1000))
        assert not await queue.store.exists("sources:d:m:vocals.flac")
        assert await cache.find("a", "m", (0, None)) is not None
        assert await cache.find("c", "m", (0, None)) is not None
    finally:
        await board.close()


async def test_the_store_budget_evicts_a_songs_sources_whole(redis_url: str, tmp_path: Path) -> None:
    """One index and one budget (STEMBOT_ARTIFACT_BUDGET_MB) over every artifact: a song's
    sources and their manifest are one group, kept or evicted together, never one source alone."""
    from core.domain.sources import SourceSet

    settings = Settings(redis_url=redis_url, artifact_budget_mb=0.25)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        cache = board.sources
        paths = {}
        for name in ("vocals", "drums"):
            paths[name] = tmp_path / f"{name}.flac"
            paths[name].write_bytes(b"x" * 100_000)
        await cache.put(entry_key("a", "m"), SourceSet(paths, 0, 1000))
        assert await cache.total_bytes() > 200_000  # its manifest with its two sources
        await queue.store.put("input:" + "0" * 64, b"y" * 100_000, 600)  # past the budget: the song goes
        assert await queue.store.exists("sources:a:m", "sources:a:m:vocals.flac", "sources:a:m:drums.flac") == 0
        assert await cache.find("a", "m", (0, None)) is None
        assert await cache.total_bytes() == 0
        assert await queue.store.stored_bytes() == 100_000  # the input alone, in the one count

        small = await Board.connect(Settings(redis_url=redis_url, artifact_budget_mb=0.15))
        try:
            await small.sources.put(entry_key("b", "m"), SourceSet(paths, 0, 1000))  # over the budget alone
            # the song being kept never evicts its own sources (one alone is useless); the input goes
            assert await small.sources.find("b", "m", (0, None)) is not None
            assert await queue.store.exists("input:" + "0" * 64) == 0
        finally:
            await small.close()
    finally:
        await board.close()


def test_a_partly_evicted_song_is_separated_again(
    tiny_env: dict[str, str], tiny_worker: WorkerProcess, redis_url: str, rock_short: Path, tmp_path: Path
) -> None:
    """A cached song that lost one source answers the next request by separating again, not by failing."""
    _enqueue(rock_short, tmp_path / "a", tiny_env, "--stems", "vocals")
    client = redis.Redis.from_url(redis_url)
    try:
        drums = client.keys("stembot:artifact:sources:*:drums.wav")
        assert len(drums) == 1
        client.delete(*drums)  # as the store's budget would
    finally:
        client.close()
    _, said = _enqueue(rock_short, tmp_path / "b", tiny_env, "--stems", "drums+bass")
    assert "rendered from the cached separation" not in said
    assert stats_totals(redis_url)["model_runs"] == 2


def test_a_section_past_the_songs_end_is_named_as_it_was_cut(
    tiny_env: dict[str, str], rock_short: Path, tmp_path: Path
) -> None:
    """`--end 99:00` on a 3 s song: the file holds 1 s to the end, and its name says so."""
    out = tmp_path / "o"
    args = ("--stems", "vocals", "--format", "wav", "--start", "1", "--end", "99:00", "-o", str(out))
    done = run_stembot("separate", str(rock_short), *args, env=tiny_env)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.iterdir()] == ["rock.vocals.1s-end.wav"]
    assert abs(read_audio(out / "rock.vocals.1s-end.wav").shape[-1] - 2 * RATE) <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--key", "-13"), "from key-12 to key+12"),
        (("--tempo", "200"), "from tempo50 to tempo150"),
        (("--start", "0:05", "--end", "0:04"), "ends before it starts"),
        (("--start", "0:05", "--end", "0:05.5"), "too short"),
        (
            (
                "--start",
                "-5",
            ),
            "is not a time",
        ),
        (("--start", "1:75"), "under 60"),
        (("--start", "5:00", "--end", "6:00"), "The song is 0:03 long: pick a section inside it"),
        # past the 3 s song, yet within the 4 s of context a section is separated with
        (("--start", "0:05"), "The song is 0:03 long: pick a section inside it"),
    ],
)
def test_out_of_range_options_are_refused(
    tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """One clear message and the user-error status, nothing written."""
    done = run_stembot("separate", str(rock_short), "--stems", "vocals", *args, "-o", str(tmp_path / "o"), env=tiny_env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "o").glob("*"))


async def test_follow_up_buttons_are_the_requesters_and_within_the_output_bound(
    redis_url: str, rock_short: Path
) -> None:
    """Another user's tap on a follow-up is refused without the song's name; a slower
    follow-up is held to the stored-bytes bound as its longer files will be."""
    from core.desk.job_desk import JobDesk
    from core.domain.deliveries import Delivery
    from core.domain.errors import InvalidCommand, TooLarge
    from core.domain.jobs import Song
    from core.domain.stems import parse_stems
    from core.media.uploads import estimated_bytes

    # One 3 s WAV fits; the same at 80 % tempo (3.75 s) does not.
    limit_mb = estimated_bytes("wav", 3.3) / 1_000_000
    settings = Settings(redis_url=redis_url, max_jobs_per_user=5, max_job_output_mb=limit_mb)
    board = await Board.connect(settings)
    try:
        desk = JobDesk(settings, board, "test")
        alice = Delivery(platform="test", job_id="", chat_id="group", user_id="alice")
        song = Song(rock_short.read_bytes(), "Alice's secret demo.flac")
        accepted = await desk.accept(song, parse_stems("vocals"), "wav", alice)
        bob = Delivery(platform="test", job_id="", chat_id="group", user_id="bob")
        with pytest.raises(InvalidCommand, match="belong to the person who asked") as refused:
            await desk.again(accepted.delivery.id, "key+1", bob)
        assert "secret" not in refused.value.user_message and bob.song == "song"
        assert await desk.book.for_user("bob") == []
        mine = Delivery(platform="test", job_id="", chat_id="group", user_id="alice")
        assert (await desk.again(accepted.delivery.id, "key+1", mine)).delivery.song == alice.song
        with pytest.raises(TooLarge):
            await desk.again(
                accepted.delivery.id, "slower", Delivery(platform="test", job_id="", chat_id="group", user_id="alice")
            )
    finally:
        await board.close()


async def _two_stems_at_once(
    queue: JobQueue, env: dict[str, str], tmp_path: Path, worker_factory: list[WorkerProcess]
) -> tuple[list[JobResult], str]:
    """Vocals and drums of one song, submitted together to two idle workers; their results and logs."""
    clip = make_clip(SONGS / "librosa_karissa_hobbs_lets_go_fishin.ogg", tmp_path / "fishin.mp3", seconds=20)
    workers = [WorkerProcess(env, tmp_path / f"w{i}.log").start() for i in range(2)]
    worker_factory.extend(workers)
    for worker in workers:
        worker.wait_ready()
    ref = await queue.store_input(clip.read_bytes(), clip.name)
    jobs = [
        await queue.submit(
            SeparationRequest(input=ref, stems=stems, model="htdemucs", requester=Requester(platform="test"))
        )
        for stems in ("vocals", "drums")
    ]
    results = [await queue.wait_result(job.job_id, timeout_s=180) for job in jobs]
    assert all("→" in w.log() for w in workers)  # each worker took one of them
    return results, "".join(w.log() for w in workers)


async def test_two_requests_for_one_song_at_once_run_the_model_once(
    board: Board,
    tiny_env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    """Two stems of one song asked for at the same moment: one job separates, the other
    waits for its sources and renders from them."""
    results, _ = await _two_stems_at_once(board.jobs, tiny_env, tmp_path, worker_factory)
    assert [r.status for r in results] == ["done", "done"]
    assert sorted(r.from_cache for r in results) == [False, True]
    assert stats_totals(redis_url)["model_runs"] == 1
    assert redis.Redis.from_url(redis_url).keys("stembot:claim:*") == []  # released


async def test_requests_for_a_song_too_big_to_keep_separate_side_by_side(
    board: Board,
    tiny_env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    """Sources over STEMBOT_SOURCES_MAX_MB are not kept; a job that waited on their separation
    then runs its own at once, rather than in turn with every other waiting job."""
    env = tiny_env | {"STEMBOT_SOURCES_MAX_MB": "0.01"}
    results, logs = await _two_stems_at_once(board.jobs, env, tmp_path, worker_factory)
    assert [(r.status, r.from_cache) for r in results] == [("done", False), ("done", False)]
    assert stats_totals(redis_url)["model_runs"] == 2
    assert "over STEMBOT_SOURCES_MAX_MB alone: not kept" in logs
    assert redis.Redis.from_url(redis_url).keys("stembot:sources:*") == []
