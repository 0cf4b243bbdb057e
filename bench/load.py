"""Load: N simulated users submit short songs through the real queue to real workers.

Each user sends a different 3 s song (so nothing is deduplicated) at a random moment in the
first `--spread` seconds and waits for the result. Workers are `stembot worker` processes
with a toy-size htdemucs (the point is the queue, not the model). Last line:
    submitted=<n> completed=<n> failed=<n> lost=<n> p50_wait_s=<s> p95_wait_s=<s>
    sources_mb=<separated sources kept for re-renders> redis_used_mb=<Redis memory at the end>
`lost` counts jobs that never reached a final state: it must be 0.

Run: python bench/load.py [--users 200] [--workers 2] [--redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.board import Board
from core.board.jobs import JobQueue
from core.domain.errors import QueueFull
from core.domain.formats import OutputFormat
from core.domain.jobs import Requester, SeparationRequest
from core.media.audio import encode
from core.settings import Settings
from testkit import SONGS, WorkerProcess, raw_redis, read_audio, stembot_env, write_tiny_repo


def songs(count: int, dest: Path) -> list[bytes]:
    """`count` different 3 s songs: slices of a real song with a little noise each."""
    base = read_audio(SONGS / "librosa_kevin_macleod_vibe_ace.ogg")
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        start = int(rng.integers(0, base.shape[1] - 3 * 44100))
        clip = base[:, start : start + 3 * 44100] + rng.standard_normal((2, 3 * 44100)).astype(np.float32) * 1e-3
        out.append(encode(clip, dest / f"{i}.flac", OutputFormat("flac")).read_bytes())
    return out


async def user(queue: JobQueue, number: int, data: bytes, spread: float) -> tuple[str, float]:
    await asyncio.sleep(random.uniform(0, spread))
    ref = await queue.store_input(data, f"song{number}.flac")
    request = SeparationRequest(
        input=ref, stems="vocals", model="htdemucs", requester=Requester(platform="test", user_id=str(number))
    )
    start = time.monotonic()
    try:
        job = await queue.submit(request)
    except QueueFull:
        return "refused", 0.0
    try:
        result = await queue.wait_result(job.job_id, timeout_s=1800)
    except TimeoutError:
        return "lost", time.monotonic() - start
    return result.status, time.monotonic() - start


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="stembot-load-") as tmp:
        repo = write_tiny_repo(Path(tmp) / "models")
        data = songs(args.users, Path(tmp))
        settings = Settings(redis_url=args.redis, max_queue=args.users + 10, max_jobs_per_user=10)
        board = await Board.connect(settings)
        queue = board.jobs
        raw = raw_redis(settings.redis_url)
        await raw.flushdb()
        env = stembot_env(
            STEMBOT_REDIS_URL=args.redis,
            STEMBOT_MODEL_REPO=str(repo),
            STEMBOT_DEVICE="cpu",
            STEMBOT_JOB_HEARTBEAT_S="2",
        )
        workers = [WorkerProcess(env, Path(tmp) / f"w{i}.log").start() for i in range(args.workers)]
        try:
            for w in workers:
                w.wait_ready()
            started = time.monotonic()
            outcomes = await asyncio.gather(*(user(queue, i, d, args.spread) for i, d in enumerate(data)))
            took = time.monotonic() - started
            kept = await board.sources.total_bytes()
            used = (await raw.info("memory"))["used_memory"]
        finally:
            for w in workers:
                w.stop()
            await raw.flushdb()
            await board.close()
    statuses = [s for s, _ in outcomes]
    waits = sorted(w for s, w in outcomes if s == "done")
    p50 = statistics.median(waits) if waits else 0.0
    p95 = waits[int(0.95 * (len(waits) - 1))] if waits else 0.0
    print(
        f"{args.users} users, {args.workers} workers, {took:.0f} s; refused (queue full): {statuses.count('refused')}"
    )
    print(
        f"submitted={len(statuses) - statuses.count('refused')} completed={statuses.count('done')} "
        f"failed={statuses.count('failed') + statuses.count('cancelled')} lost={statuses.count('lost')} "
        f"p50_wait_s={p50:.1f} p95_wait_s={p95:.1f} sources_mb={kept / 2**20:.1f} redis_used_mb={used / 2**20:.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spread", type=float, default=30.0, help="users arrive over this many seconds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    asyncio.run(main(parser.parse_args()))
