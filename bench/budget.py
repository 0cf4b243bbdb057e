"""Budget: 1000 jobs of 4-minute songs through the Redis artifact store stay under its byte budget.

Each job is a different song of `--input-mb` (10 MB, a 4-minute mp3) split into all four
stems, which the benchmark engine (`STEMBOT_ENGINE=benchmark`) writes as copies of the
input: 4 × 10 MB, about what four 320 kbps mp3 stems weigh. Jobs are submitted in waves
that keep `--backlog` of them queued, so there are always inputs that must not be evicted.
After every wave it checks that every queued job's input is still stored; it samples the
store's bytes (`stembot_artifact_bytes`) throughout; at the end every job must be done
(a job whose input was evicted would fail "expired").

`--scale` shrinks every size and the budget by the same factor (0.1 by default: 1 MB songs
against a 204.8 MB budget, so the run writes 5 GB, not 50 GB, on a shared box); eviction
depends only on their ratio. Last line:
    jobs=… done=… failed=… queued_inputs_evicted=… store_peak_mb=… budget_mb=… redis_peak_mb=…

Run: python bench/budget.py [--jobs 1000] [--scale 0.1] [--budget-mb 2048] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import on_private_redis
from core.board import Board
from core.board.jobs import JobQueue
from core.domain.jobs import Requester, SeparationRequest
from core.settings import Settings
from testkit import WorkerProcess, stembot_env, wait_until


async def _backlog_within(board: Board, backlog: int) -> bool:
    return await board.in_queue() <= backlog


async def sample(queue: JobQueue, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], await queue.store.stored_bytes())
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, url: str, tmp: Path) -> None:
    budget_mb = args.budget_mb * args.scale
    song_bytes = int(args.input_mb * args.scale * 2**20)
    settings = Settings(redis_url=url, artifact_budget_mb=budget_mb, max_queue=args.jobs + 10)
    board = await Board.connect(settings)
    queue = board.jobs
    env = stembot_env(
        STEMBOT_REDIS_URL=url,
        STEMBOT_ENGINE="benchmark",
        STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND="0.0005",
        STEMBOT_ARTIFACT_BUDGET_MB=str(budget_mb),
        # No chat fetches these stems (a bot unpins them once delivered): no delivery grace.
        STEMBOT_RESULT_PIN_S="0",
        TMPDIR=str(tmp),
    )
    workers = [WorkerProcess(env, tmp / f"w{i}.log").start() for i in range(args.workers)]
    peak, stop = [0], asyncio.Event()
    evicted_inputs = 0
    jobs: list[str] = []
    try:
        for w in workers:
            w.wait_ready(timeout=300)
        sampler = asyncio.create_task(sample(queue, peak, stop))
        for n in range(args.jobs):
            data = n.to_bytes(4, "big") + os.urandom(16) + bytes(song_bytes - 20)  # a different "song" each
            ref = await queue.store_input(data, f"song{n}.mp3")
            request = SeparationRequest(
                input=ref, stems="all", model="htdemucs", requester=Requester(platform="test", user_id=str(n))
            )
            jobs.append((await queue.submit(request)).job_id)
            if len(jobs) % args.backlog == 0:
                queued = [j for j in jobs[-args.backlog :] if await board.workers.position(j) not in (None, 0)]
                evicted_inputs += await _queued_inputs_missing(queue, queued)
                await wait_until(lambda: _backlog_within(board, args.backlog), timeout=600, interval=0.2)
        results = [await queue.wait_result(j, timeout_s=600) for j in jobs]
        stop.set()
        await sampler
        peak[0] = max(peak[0], await queue.store.stored_bytes())
        redis_peak = (await board.memory()).peak
    finally:
        for w in workers:
            w.stop()
        await board.close()
    done = sum(1 for r in results if r.status == "done")
    failed = [r.error.message for r in results if r.status != "done" and r.error]
    print(
        f"{args.jobs} jobs of {args.input_mb * args.scale:.1f} MB songs → 4 stems each "
        f"({args.jobs * 5 * args.input_mb * args.scale / 1024:.1f} GB written), budget {budget_mb:.1f} MB, "
        f"backlog {args.backlog}; failures: {sorted(set(failed))[:3]}"
    )
    print(
        f"jobs={args.jobs} done={done} failed={len(results) - done} queued_inputs_evicted={evicted_inputs} "
        f"store_peak_mb={peak[0] / 2**20:.1f} budget_mb={budget_mb:.1f} redis_peak_mb={redis_peak / 2**20:.1f}"
    )


async def _queued_inputs_missing(queue: JobQueue, job_ids: list[str]) -> int:
    """How many of these queued jobs have lost their input."""
    missing = 0
    for job_id in job_ids:
        request = await queue.queued_request(job_id)
        if request is not None:
            missing += await queue.store.exists(request.input.artifact_key) == 0
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--input-mb", type=float, default=10.0, help="one song (a 4-minute mp3)")
    parser.add_argument("--budget-mb", type=float, default=Settings.model_fields["artifact_budget_mb"].default)
    parser.add_argument("--scale", type=float, default=0.1, help="shrink every size and the budget by this")
    parser.add_argument("--backlog", type=int, default=40, help="jobs kept queued")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stembot-budget-") as tmp:
        on_private_redis(Path(tmp), lambda url: run(args, url, Path(tmp)))


if __name__ == "__main__":
    main()
