"""A job's pipeline: the song decoded once, every encoder fed while the model runs, the
sources kept after the answer, and a cache that cannot keep them costing nothing but itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis
import soundfile
import torch
from demucs.pretrained import get_model

from core.board import Board
from core.board.artifacts import RedisArtifactStore
from core.board.sources import SourcesCache
from core.domain.errors import StorageFull
from core.domain.formats import OutputFormat
from core.domain.jobs import Requester, SeparationRequest
from core.domain.render import RenderOptions
from core.domain.sources import SourceSet
from core.domain.stems import parse_stems
from core.media.audio import AudioWriter
from core.media.lame import LameWriter
from core.settings import Settings
from testkit import SONGS, RedisServer, WorkerProcess, ffmpeg, fill, raw_redis, read_audio
from worker import pipeline
from worker.encoders import ParallelWriter, SourceWriter, on_pcm24_grid, pcm24, read_source
from worker.windowed import WindowedSeparator

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def separator(tiny_repo: Path) -> WindowedSeparator:
    return WindowedSeparator(get_model("htdemucs", repo=tiny_repo), torch.device("cpu"))


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 s of mp3: with the toy model's 2 s windows, many more stretches than an encoder's queue holds."""
    dest = tmp_path_factory.mktemp("pipeline") / "song.mp3"
    src = SONGS / "bytedance_mss_vocals_accompaniment_10s.mp3"
    ffmpeg("-stream_loop", "1", "-i", f"file:{src}", "-t", "16", "-c:a", "libmp3lame", f"file:{dest}")
    return dest


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch, separator: WindowedSeparator) -> Iterator[dict[str, Any]]:
    """Counts the decoders the pipeline starts, and notes which encoder writes came while the model ran."""
    seen: dict[str, Any] = {"decoded": [], "during": Counter(), "after": Counter()}
    running = threading.Event()
    stream = separator.separate_stream

    def counting(decoder: Any) -> Any:
        def counted(path: Path, *args: Any, **kwargs: Any) -> Any:
            seen["decoded"].append(Path(path).name)
            return decoder(path, *args, **kwargs)

        return counted

    def flagged(*args: Any, **kwargs: Any) -> None:
        running.set()
        try:
            stream(*args, **kwargs)
        finally:
            running.clear()

    class Watched(AudioWriter):
        def write(self, block: np.ndarray) -> None:
            seen["during" if running.is_set() else "after"][self.dest.name] += 1
            super().write(block)

    class WatchedLame(LameWriter):
        def write(self, block: np.ndarray) -> None:
            seen["during" if running.is_set() else "after"][self.dest.name] += 1
            super().write(block)

    class WatchedSource(SourceWriter):
        def write(self, block: np.ndarray) -> None:
            seen["during" if running.is_set() else "after"][self.dest.name] += 1
            super().write(block)

    for decoder in ("stream_decode", "decode_to_file", "load_audio", "read_source"):
        monkeypatch.setattr(pipeline, decoder, counting(getattr(pipeline, decoder)))
    monkeypatch.setattr(pipeline, "AudioWriter", Watched)
    monkeypatch.setattr(pipeline, "LameWriter", WatchedLame)
    monkeypatch.setattr(pipeline, "SourceWriter", WatchedSource)
    monkeypatch.setattr(separator, "separate_stream", flagged)
    yield seen


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_a_separation_decodes_once_and_feeds_every_encoder_while_the_model_runs(
    separator: WindowedSeparator, song: Path, tmp_path: Path, watched: dict[str, Any]
) -> None:
    keep_in, out = tmp_path / "keep", tmp_path / "out"
    keep_in.mkdir()
    out.mkdir()
    spec = pipeline.RenderSpec(out, "tune", parse_stems("karaoke drums"), OutputFormat("mp3"))
    timings: dict[str, float] = {}
    done = pipeline.separate_sources(song, separator, Settings(), spec, keep_in, timings=timings)

    assert watched["decoded"] == ["song.mp3"]  # karaoke's mixture comes from that one decode too
    made = sorted(f.path.name for f in done.files)
    assert made == ["tune.drums.mp3", "tune.instrumental.mp3"]
    kept = sorted(p.name for p in done.sources.paths.values())
    assert kept == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    # Each encoder had audio before the model finished: they ran beside it, not after it.
    assert set(watched["during"]) == set(made) | set(kept)
    assert set(timings) == {"decode", "separate", "encode"} and all(t > 0 for t in timings.values())
    for f in done.files:
        assert abs(read_audio(f.path).shape[-1] / 44100 - 16.0) < 0.1
    vocals = read_audio(keep_in / "vocals.wav")
    mixture = read_audio(song)[:, : vocals.shape[-1]]
    instrumental = read_audio(out / "tune.instrumental.mp3")[:, : vocals.shape[-1]]
    # the instrumental is the song less the vocals (mp3 keeps it to within its own noise)
    residual = instrumental - (mixture - vocals)
    assert 10 * np.log10(np.mean((mixture - vocals) ** 2) / np.mean(residual**2)) > 20


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_a_render_from_kept_sources_decodes_only_what_its_files_need(
    separator: WindowedSeparator, song: Path, tmp_path: Path, watched: dict[str, Any]
) -> None:
    keep_in = tmp_path / "keep"
    keep_in.mkdir()
    first = pipeline.separate_sources(song, separator, Settings(), None, keep_in)
    watched["decoded"].clear()
    spec = pipeline.RenderSpec(tmp_path, "tune", parse_stems("karaoke"), OutputFormat("flac"), RenderOptions())
    files = pipeline.render_files(first.sources, song, spec, Settings())
    assert sorted(watched["decoded"]) == ["song.mp3", "vocals.wav"]
    assert [f.path.name for f in files] == ["tune.instrumental.flac"]


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_a_section_is_cut_to_the_sample_while_streaming(
    separator: WindowedSeparator, song: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    decode = pipeline.decode_to_file

    def noted(*args: Any, **kwargs: Any) -> int:
        decoded.append(decode(*args, **kwargs))
        return decoded[-1]

    monkeypatch.setattr(pipeline, "decode_to_file", noted)
    options = RenderOptions(start_s=3.0, end_s=9.5)
    spec = pipeline.RenderSpec(tmp_path, "tune", parse_stems("vocals"), OutputFormat("wav"), options)
    done = pipeline.separate_sources(song, separator, Settings(), spec)
    assert decoded[0] < 15 * 44100  # the decoder stopped past the section's context, not at the song's end (16 s)
    assert read_audio(done.files[0].path).shape[-1] == int(6.5 * 44100)
    assert done.sources.paths == {}  # nothing asked to be kept
    assert (done.sources.offset, done.sources.whole) == (0, False)  # 3 s less 4 s of context, from 0


@pytest.mark.parametrize("codec", ["wav", "flac"])
def test_kept_sources_hold_the_separation_to_24_bits(codec: str, tmp_path: Path) -> None:
    """A kept source read back is the float audio written, within one 24-bit step (138 dB
    under full scale), written block by block and read back in blocks of another size; and
    exactly the samples `on_pcm24_grid` gives, which the fresh files are made from."""
    rng = np.random.default_rng(7)
    audio = np.clip(rng.normal(0, 0.3, (2, 3 * 44100 + 17)), -1, 1).astype(np.float32)
    audio[:, :4] = [[1.0, -1.0, 0.0, 2**-23], [-1.0, 1.0, 0.0, -(2**-22)]]  # full scale, and the smallest steps
    dest = tmp_path / f"vocals.{codec}"
    writer = SourceWriter(dest)
    for at in range(0, audio.shape[-1], 10_000):
        writer.write(audio[:, at : at + 10_000])
    writer.close()
    back = np.concatenate(list(read_source(dest, block=44_100)), axis=-1)
    assert back.shape == audio.shape
    assert np.max(np.abs(back - audio)) <= 2**-23
    assert np.max(np.abs(back[:, 2:4] - audio[:, 2:4])) == 0  # silence and the smallest steps exactly
    on_grid = audio.copy()
    on_pcm24_grid(on_grid)
    assert np.array_equal(back, on_grid)  # what a render from the cache reads is what a fresh one used
    assert 10 * np.log10(np.sum(audio.astype(np.float64) ** 2) / np.sum((back - audio).astype(np.float64) ** 2)) > 130


def test_a_kept_wav_holds_each_sample_rounded_to_24_bits(tmp_path: Path) -> None:
    """Every sample of a kept WAV is round(x · 2^23) (+1 on the top step), as libsndfile reads
    the file back: stretches of odd and even lengths, full scale both ways, and the rounding's ties."""
    rng = np.random.default_rng(11)
    audio = np.clip(rng.normal(0, 0.4, (2, 20_003)), -1, 1).astype(np.float32)
    audio[:, :5] = [[1.0, -1.0, 0.5 / 2**23, 1.5 / 2**23, -2.5 / 2**23], [-1.0, 1.0, 0.0, -(2**-23), 2**-22]]
    writer = SourceWriter(tmp_path / "bass.wav")
    for at, size in zip([0, 1, 4, 1003, 10_000], [1, 3, 999, 8997, 10_003], strict=True):
        writer.write(audio[:, at : at + size])
    writer.close()
    with soundfile.SoundFile(tmp_path / "bass.wav") as back:
        assert (back.samplerate, back.channels, back.subtype, back.frames) == (44_100, 2, "PCM_24", 20_003)
        steps = back.read(dtype="int32") >> 8
    expected = np.clip(np.rint(audio.T.astype(np.float64) * 2**23), -(2**23), 2**23 - 1)
    assert np.array_equal(steps, expected)
    assert steps[:5].tolist() == [[2**23 - 1, -(2**23)], [-(2**23), 2**23 - 1], [0, 0], [2, -1], [-2, 2]]


# frames (left, right) -> the bytes a 24-bit WAV holds for them: little-endian, left first
PCM24_TABLE = [
    ([(0.0, 0.0)], "000000 000000"),
    ([(1.0, -1.0)], "ffff7f 000080"),  # full scale both ways: the top step is 2^23 - 1
    ([(2**-23, -(2**-23))], "010000 ffffff"),  # the smallest steps
    ([(0.5 / 2**23, 1.5 / 2**23)], "000000 020000"),  # ties round to even
    ([(0.5, -0.25), (-2.5 / 2**23, 0.75)], "000040 0000e0 feffff 000060"),  # two frames: one group of words
    ([(0.5, 0.0), (0.0, 0.5), (2**-23, 2**-22)], "000040 000000 000000 000040 010000 020000"),  # and one over
]


@pytest.mark.parametrize(("frames", "expected"), PCM24_TABLE)
def test_pcm24_packs_known_frames_to_their_bytes(frames: list[tuple[float, float]], expected: str) -> None:
    block = np.array(frames, dtype=np.float32).T
    assert pcm24(block).tobytes() == bytes.fromhex(expected.replace(" ", ""))
    stacked = np.stack([block, block])  # a view into a separation's block of sources, as the writer gets it
    assert pcm24(stacked[1]).tobytes() == bytes.fromhex(expected.replace(" ", ""))


def test_sources_kept_before_as_ffmpeg_flac_still_read(tmp_path: Path) -> None:
    """Entries kept before the worker wrote its own (ffmpeg's FLAC 24-bit) read back as written."""
    from core.media.audio import encode

    audio = np.random.default_rng(2).uniform(-0.9, 0.9, (2, 44_100)).astype(np.float32)
    old = encode(audio, tmp_path / "vocals.flac", OutputFormat("flac", bit_depth=24))
    back = np.concatenate(list(read_source(old)), axis=-1)
    assert back.shape == audio.shape and np.max(np.abs(back - audio)) <= 2**-23


def test_a_kept_source_aborted_while_written_leaves_nothing(tmp_path: Path) -> None:
    """A cancelled job aborts its kept sources from its own thread while their feeders write."""
    block = np.random.default_rng(1).uniform(-1, 1, (2, 441_000)).astype(np.float32)
    writer = ParallelWriter(SourceWriter(tmp_path / "vocals.wav"))
    for _ in range(8):
        writer.put(lambda: block)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


async def test_a_big_artifact_goes_in_pieces_and_is_never_seen_half_written(redis_url: str) -> None:
    """Values past `_PIECE` are written beside their key and moved in place whole."""
    from core.board.artifacts import _PIECE

    settings = Settings(redis_url=redis_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisArtifactStore(client, settings.key_prefix)
    data = np.random.default_rng(3).bytes(2 * _PIECE + 12345)
    try:
        await store.put("sources:big:m:vocals.wav", data, 60)
        assert await store.get("sources:big:m:vocals.wav") == data
        assert 0 < await client.ttl(f"{settings.key_prefix}artifact:sources:big:m:vocals.wav") <= 60
        assert await store.stored_bytes() == len(data)
        assert await client.keys("*staging*") == []
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.mark.parametrize("size", [0, 1, 3 * 4096 + 1])
def test_a_mapped_file_reads_as_its_bytes(size: int, tmp_path: Path) -> None:
    from core.board.sources import mapped

    path = tmp_path / "vocals.wav"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    view = mapped(path)
    assert (len(view), bytes(view)) == (size, path.read_bytes())


async def test_kept_sources_sent_from_their_mapping_come_back_whole(redis_url: str, tmp_path: Path) -> None:
    """Sources go to Redis from their files' mappings (one past two pieces, one small):
    fetched back, each file is byte for byte the one kept."""
    from core.board.artifacts import _PIECE

    settings = Settings(redis_url=redis_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = SourcesCache(RedisArtifactStore(client, settings.key_prefix), client, settings)
    kept, back = tmp_path / "kept", tmp_path / "back"
    kept.mkdir(), back.mkdir()
    paths = {"vocals": kept / "vocals.wav", "drums": kept / "drums.wav"}
    paths["vocals"].write_bytes(np.random.default_rng(5).bytes(2 * _PIECE + 7))
    paths["drums"].write_bytes(b"RIFF")
    try:
        assert await cache.put("sources:abc:htdemucs", SourceSet(paths, 0, 44100))
        found = await cache.find("abc", "htdemucs", (0, None))
        assert found is not None
        fetched = await cache.fetch(*found, back)
        assert fetched is not None
        assert {n: p.read_bytes() for n, p in fetched.paths.items()} == {n: p.read_bytes() for n, p in paths.items()}
    finally:
        await client.flushdb()
        await client.aclose()


async def test_a_big_artifact_refused_half_way_leaves_no_pieces(full_redis: RedisServer) -> None:
    from core.board.artifacts import _PIECE

    settings = Settings(redis_url=full_redis.url)
    client = redis.asyncio.Redis.from_url(full_redis.url)
    store = RedisArtifactStore(client, settings.key_prefix)
    fill(full_redis.url, 0.9)  # room for a piece or two of it, not for all
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            await store.put("sources:big:m:vocals.wav", b"z" * (3 * _PIECE + 1), 60)
        assert await client.keys("*staging*") == []
        assert await client.keys("*sources*") == []
    finally:
        await client.aclose()


async def test_sources_that_would_fill_redis_are_not_sent(full_redis: RedisServer, tmp_path: Path) -> None:
    """Sources that would take Redis past `redis_full_ratio` are refused before a byte is
    sent: a refused write leaves Redis over `maxmemory` for a moment, and the job's next
    writes (its answer's books) failed meanwhile (issue #20's flaky test)."""
    settings = Settings(redis_url=full_redis.url, redis_full_ratio=1.0)
    client = redis.asyncio.Redis.from_url(full_redis.url)
    cache = SourcesCache(RedisArtifactStore(client, settings.key_prefix), client, settings)
    paths = {}
    for name in ("drums", "vocals"):
        paths[name] = tmp_path / f"{name}.wav"
        paths[name].write_bytes(np.random.default_rng(len(name)).bytes(1024 * 1024))
    fill(full_redis.url, 0.97)  # under 1 MB of room
    sent: list[bytes] = []
    try:
        async with client.monitor() as monitor:  # every command Redis gets, from any client
            with pytest.raises(StorageFull):
                await cache.put("sources:abc:htdemucs", SourceSet(paths, 0, 44100))
            await client.set("after", b"ok")  # the next write of a job: room for it
            async for command in monitor.listen():  # bounded: ends at the SET above
                sent.append(command["command"].encode())
                if command["command"].startswith("SET after"):
                    break
        assert not any(b"sources" in c for c in sent if not c.startswith(b"INFO"))
        assert await client.keys("*sources*") == []
    finally:
        await client.aclose()


async def test_a_failed_keep_leaves_no_half_entry(full_redis: RedisServer, tmp_path: Path) -> None:
    settings = Settings(redis_url=full_redis.url)
    client = redis.asyncio.Redis.from_url(full_redis.url)
    store = RedisArtifactStore(client, settings.key_prefix)
    cache = SourcesCache(store, client, settings)
    paths = {}
    for name in ("drums", "bass", "other", "vocals"):
        paths[name] = tmp_path / f"{name}.flac"
        paths[name].write_bytes(np.random.default_rng(len(name)).bytes(1024 * 1024))
    fill(full_redis.url, 0.9)  # room for some of the four sources, not all
    stored = []
    put = store.put

    async def room(size: int) -> None:  # Redis had room when asked; another client filled it since
        pass

    cache._check_room = room  # type: ignore[method-assign]

    async def noted(key: str, data: bytes, ttl_s: int) -> None:
        await put(key, data, ttl_s)
        stored.append(key)

    store.put = noted  # type: ignore[method-assign]
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            await cache.put("sources:abc:htdemucs", SourceSet(paths, 0, 44100))
        assert 0 < len(stored) < 4  # it failed half-way
        assert await client.keys("*sources*") == []
        assert await cache.find("abc", "htdemucs", (0, None)) is None
    finally:
        await client.aclose()


async def test_a_job_whose_sources_cannot_be_kept_still_answers(
    full_redis: RedisServer, tiny_env: dict[str, str], tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    clip = tmp_path / "clip.flac"
    ffmpeg("-i", f"file:{SONGS / 'bytedance_mss_vocals_accompaniment_10s.mp3'}", "-t", "6", f"file:{clip}")
    board = await Board.connect(Settings(redis_url=full_redis.url, redis_full_ratio=1.0))
    queue = board.jobs
    try:
        ref = await queue.store_input(clip.read_bytes(), clip.name)
        request = SeparationRequest(input=ref, stems="vocals", model="htdemucs", requester=Requester(platform="test"))
        job = await queue.submit(request)
        # Room for the answer (one mp3 of 6 s), not for four lossless sources of the song.
        fill(full_redis.url, 0.97)
        env = tiny_env | {"STEMBOT_REDIS_URL": full_redis.url, "STEMBOT_REDIS_FULL_RATIO": "1.0"}
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        worker_factory.append(worker)
        result = await queue.wait_result(job.job_id, timeout_s=120)
        assert result.status == "done", (result.error, worker.log()[-3000:])
        assert len(await queue.fetch(result.stems[0])) > 10_000
        assert "could not keep the sources" in worker.log()
        claim = f"stembot:claim:sources:{ref.sha256}:htdemucs"
        raw = raw_redis(full_redis.url)
        assert await raw.keys("*sources*") == [claim.encode()]  # nothing kept, nothing half-kept
        assert await raw.get(claim) == b"-unkept-"  # jobs waiting on it would separate at once
    finally:
        await board.close()


async def test_a_claim_is_one_jobs_until_released_or_lapsed(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = SourcesCache(RedisArtifactStore(client, settings.key_prefix), client, settings)
    key = "sources:s:m"
    try:
        assert await cache.claim(key, "job-a", 30) == "ours"
        assert await cache.claim(key, "job-b", 30) == "held"
        assert await cache.claim(key, "job-a", 30) == "ours"  # job-a again: a retry after its worker died
        await cache.release(key, "job-b", True, 30)  # not job-b's to release
        await cache.renew(key, "job-b", 0.05)  # nor to renew
        await asyncio.sleep(0.1)
        assert await cache.claimed(key)
        await cache.release(key, "job-a", True, 30)  # kept: waiting jobs will find the sources
        assert not await cache.claimed(key)
        assert await cache.claim(key, "job-b", 0.2) == "ours"
        await asyncio.sleep(0.4)  # job-b's worker died: the claim lapses
        assert await cache.claim(key, "job-c", 30) == "ours"
        await cache.release(key, "job-c", False, 0.2)  # not kept: the others separate, side by side
        assert await cache.claim(key, "job-d", 30) == await cache.claim(key, "job-e", 30) == "unkept"
        await asyncio.sleep(0.4)
        assert await cache.claim(key, "job-f", 30) == "ours"  # a later request tries to keep them again
    finally:
        await client.aclose()


async def test_sources_kept_between_the_look_and_the_claim_are_found(board: Board, tmp_path: Path) -> None:
    """The race of two stems of one song asked for at once, on a loaded host: the waiting
    job looked, found nothing, and the separating job kept its sources and let go before
    the waiter's next claim. The waiter took the free claim and ran the model again (both
    answers "not from cache"). It now looks once more after a claim it gets."""
    from core.domain.sources import entry_key
    from worker.tasks import JobRun, _find_or_claim

    cache = board.sources  # type: ignore[attr-defined]
    ref = await board.jobs.store_input(b"a song", "song.flac")  # type: ignore[attr-defined]
    request = SeparationRequest(input=ref, stems="drums", model="htdemucs", requester=Requester(platform="test"))
    key = entry_key(ref.sha256, "htdemucs")
    vocals = tmp_path / "vocals.flac"
    vocals.write_bytes(b"the other job's vocals")
    assert await cache.claim(key, "job-a", 30) == "ours"  # job-a separates the song
    looked = []
    real_find = cache.find

    async def find_while_job_a_ends(*args: Any) -> Any:
        found = await real_find(*args)
        if not looked:  # job-a keeps its sources and lets go just after the waiter's first look
            assert await cache.put(key, SourceSet({"vocals": vocals}, 0, 1000))
            await cache.release(key, "job-a", True, 30)
        looked.append(found)
        return found

    cache.find = find_while_job_a_ends
    run = JobRun(board, "job-b")  # type: ignore[arg-type]
    (tmp_path / "sources").mkdir()
    sources = await _find_or_claim(run, cache, request, "htdemucs", True, tmp_path / "sources")
    assert looked[0] is None and sources is not None
    assert sources.paths["vocals"].read_bytes() == b"the other job's vocals"
    assert run.claims == [] and not await cache.claimed(key)  # job-b separates nothing, holds nothing


async def test_a_look_while_sources_are_being_kept_leaves_them_be(board: Board, tmp_path: Path) -> None:
    """The flaky two-stems-at-once test's cause: a waiting job looked while the other was
    keeping the sources (written, their manifest not yet), took that for an expired entry and
    dropped them, so nothing was found once the manifest came, and it separated again."""
    from core.domain.sources import entry_key

    cache = board.sources  # type: ignore[attr-defined]
    key = entry_key("a-song", "htdemucs")
    vocals = tmp_path / "vocals.flac"
    vocals.write_bytes(b"the vocals")
    real_put = cache.store.put
    looked = []

    async def put_with_a_look_before_the_manifest(name: str, data: Any, ttl_s: float) -> Any:
        if name == key:  # the sources are in, the manifest is next: the waiter looks now
            looked.append(await cache.find("a-song", "htdemucs", (0, None)))
        return await real_put(name, data, ttl_s)

    cache.store.put = put_with_a_look_before_the_manifest
    assert await cache.put(key, SourceSet({"vocals": vocals}, 0, 1000))
    assert looked == [None]  # not there yet
    found = await cache.find("a-song", "htdemucs", (0, None))
    assert found is not None
    (tmp_path / "got").mkdir()
    fetched = await cache.fetch(*found, tmp_path / "got")
    assert fetched is not None and fetched.paths["vocals"].read_bytes() == b"the vocals"


@pytest.mark.parametrize("room_for_both", [True, False], ids=["room-for-both", "room-for-one"])
async def test_eviction_leaves_sources_being_kept_be_and_drops_leftovers(
    board: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room_for_both: bool
) -> None:
    """The same race in `evict`: another song kept meanwhile evicts, and an entry whose sources
    are in but whose manifest is not yet is no leftover, nor the one to evict when the cap is
    passed (the other song goes: it is not kept). One that has had no manifest for longer
    than a manifest lives is a leftover, and goes."""
    from core.board import sources as sources_module
    from core.domain.sources import entry_key

    cache = board.sources  # type: ignore[attr-defined]
    monkeypatch.setattr(cache, "max_bytes", 10_000_000 if room_for_both else 150_000)
    key, other, left = (entry_key(song, "htdemucs") for song in ("a-song", "another", "left-over"))
    vocals, others = tmp_path / "vocals.flac", tmp_path / "others.flac"
    vocals.write_bytes(b"v" * 100_000)
    others.write_bytes(b"o" * 100_000)
    await cache.store.put(f"{left}:vocals.flac", b"an expired entry's vocals", cache.ttl_s)
    real_put = cache.store.put
    other_kept = []

    async def put_with_another_song_kept_before_the_manifest(name: str, data: Any, ttl_s: float) -> Any:
        if name == key:  # the sources are in, the manifest is next: another job keeps its song now
            other_kept.append(await cache.put(other, SourceSet({"vocals": others}, 0, 1000)))
        return await real_put(name, data, ttl_s)

    monkeypatch.setattr(cache.store, "put", put_with_another_song_kept_before_the_manifest)
    assert await cache.put(key, SourceSet({"vocals": vocals}, 0, 1000))
    assert other_kept == [room_for_both]
    found = await cache.find("a-song", "htdemucs", (0, None))
    assert found is not None
    (tmp_path / "got").mkdir()
    fetched = await cache.fetch(*found, tmp_path / "got")
    assert fetched is not None and fetched.paths["vocals"].read_bytes() == b"v" * 100_000
    assert await cache.store.exists(f"{left}:vocals.flac") == 1  # young: it may be on its way still

    later = time.time() + cache.ttl_s + 1  # a manifest written before now is gone by then
    monkeypatch.setattr(sources_module, "time", SimpleNamespace(time=lambda: later))
    assert await cache.evict() == []
    assert await cache.store.exists(f"{left}:vocals.flac") == 0
    assert sorted(await cache.index.groups("sources:")) == sorted([key, other] if room_for_both else [key])
