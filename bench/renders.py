"""A song's first separation against a render from its cached sources, through a real worker.

Makes an N-minute song (a real song looped, MP3), starts a `stembot worker` (real weights
when given), asks for the vocals (the model runs and the sources are kept), then for
karaoke and for the drums 2 semitones down at 80 % (rendered from the cached sources).
Times are the worker's own job totals. Last line:
    minutes=<n> first_s=<s> karaoke_from_cache_s=<s> key_tempo_from_cache_s=<s> ratio=<first/karaoke> sources_mb=<MB>

Run: python bench/renders.py [--minutes 4] [--model-repo PATH] [--redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.board import Board
from core.board.jobs import JobQueue
from core.domain.jobs import JobResult, Requester, SeparationRequest
from core.domain.render import RenderOptions
from core.settings import Settings
from testkit import MODELS, SONGS, WorkerProcess, ffmpeg, raw_redis, stembot_env

SOURCE = SONGS / "librosa_karissa_hobbs_lets_go_fishin.ogg"


def make_song(minutes: float, dest: Path) -> Path:
    ffmpeg(
        "-stream_loop",
        "-1",
        "-i",
        str(SOURCE),
        "-t",
        str(minutes * 60),
        "-c:a",
        "libmp3lame",
        "-b:a",
        "192k",
        str(dest),
    )
    return dest


async def ask(queue: JobQueue, song: Path, stems: str, options: RenderOptions) -> JobResult:
    ref = await queue.store_input(song.read_bytes(), song.name)
    request = SeparationRequest(
        input=ref, stems=stems, model="htdemucs", options=options, requester=Requester(platform="test")
    )
    submission = await queue.submit(request)
    result = await queue.wait_result(submission.job_id, timeout_s=3600)
    if result.status != "done":
        raise SystemExit(f"{stems}: {result.status} {result.error}")
    return result


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="stembot-renders-") as tmp:
        song = make_song(args.minutes, Path(tmp) / "song.mp3")
        settings = Settings(redis_url=args.redis, max_duration_s=args.minutes * 60 + 60)
        board = await Board.connect(settings)
        queue = board.jobs
        raw = raw_redis(settings.redis_url)
        await raw.flushdb()
        env = stembot_env(
            STEMBOT_REDIS_URL=args.redis,
            STEMBOT_MODEL_REPO=str(args.model_repo),
            STEMBOT_DEVICE="cpu",
            STEMBOT_MAX_DURATION_S=str(args.minutes * 60 + 60),
        )
        worker = WorkerProcess(env, Path(tmp) / "worker.log").start()
        try:
            worker.wait_ready(timeout=600)
            first = await ask(queue, song, "vocals", RenderOptions())
            karaoke = await ask(queue, song, "karaoke", RenderOptions())
            shifted = await ask(queue, song, "drums", RenderOptions(key=-2, tempo=80))
            kept = await board.sources.total_bytes()
        finally:
            worker.stop()
            await raw.flushdb()
            await board.close()
    assert not first.from_cache and karaoke.from_cache and shifted.from_cache
    f, k, s = (r.timings["total"] for r in (first, karaoke, shifted))
    separated = first.timings.get("separate", 0)
    print(f"first separation {f:.1f} s (model {separated:.1f} s); renders from cache: {k:.1f} s, {s:.1f} s")
    print(
        f"minutes={args.minutes:g} first_s={f:.1f} karaoke_from_cache_s={k:.1f} key_tempo_from_cache_s={s:.1f} "
        f"ratio={f / k:.1f} sources_mb={kept / 2**20:.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--model-repo", type=Path, default=MODELS)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    asyncio.run(main(parser.parse_args()))
