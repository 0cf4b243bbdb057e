"""Scale: N worker processes and M simulated users through the real queue and one Redis.

Workers are `stembot worker` processes with the benchmark engine (`STEMBOT_ENGINE=benchmark`:
no model and no torch, a set time per second of audio; decode, encode, storage, progress and
the queue are the real ones), so twenty fit on this box. Users arrive at random over
`--spread` seconds, each with a different short song, store it and submit it through
`Board`, follow its progress as a bot's delivery loop does (`watch`, every `--poll-s`)
and wait for the result. Redis is a private redis-server started for the run, with AOF as
the compose file runs it (or `--redis URL`, whose INFO figures then include other clients).

It reports:
- queue overhead per job: enqueue → start, minus the time the job waited for a free worker.
  From arq's own enqueue/start/finish times: the overhead is the time the job was the oldest
  one waiting while a worker slot stood idle (a slot is busy from a job's start to its finish;
  the gap until its next start, storing the result and polling, counts as overhead);
- Redis commands and network bytes per job: INFO commandstats and stats over the run, all
  clients included (workers' polls and heartbeats, users' progress reads);
- Redis peak memory, and how much of it the artifacts (inputs and stems) held;
- ETA error: |ETA shown − real wait| / max(real wait, 1 s), for the users whose first status
  was "queued" with an ETA (a wait under a second is never shown as more than "about 0 s");
- lost jobs: submitted and never finished.

Last line:
    workers=… users=… completed=… lost=… overhead_p95_ms=… redis_ops_per_job=… eta_error_p50=…

Run: python bench/scale.py [--workers 20] [--users 2000] [--spread 150] [--job-s 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.board import Board
from core.board.jobs import JobQueue
from core.domain.jobs import Requester, SeparationRequest, Stage
from core.settings import Settings
from testkit import WorkerProcess, raw_redis, stembot_env, wait_until


@dataclass
class Outcome:
    job_id: str
    status: str  # done, failed, cancelled, refused, lost
    eta_s: float | None = None  # the ETA of the user's first status, when it was "queued"
    submitted: float = 0.0  # when `submit` returned, here
    enqueued: float = 0.0  # arq's times, seconds since the epoch
    started: float = 0.0
    finished: float = 0.0


def song(number: int, seconds: float, rate: int = 22050) -> bytes:
    """A different mono WAV per user: a tone with its own noise, so nothing is deduplicated."""
    rng = np.random.default_rng(abs(number) + (10**6 if number < 0 else 0))
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    return buf.getvalue()


class PrivateRedis:
    """A redis-server for this run only, on a free port, with AOF as in the compose file."""

    def __init__(self, directory: Path, port: int) -> None:
        self.port = port
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        cmd += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != b"PONG\n":
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        self.proc.wait(10)


def on_private_redis(directory: Path, main: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """Run `main(url)` against a `PrivateRedis` on a free port, stopped whatever happens."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = PrivateRedis(directory, port)
    try:
        asyncio.run(main(server.url))
    finally:
        server.stop()


async def _announced(board: Board, workers: int) -> bool:
    return (await board.workers.capacity()).slots >= workers


async def user(queue: JobQueue, number: int, data: bytes, at: float, args: argparse.Namespace) -> Outcome:
    await asyncio.sleep(at)
    ref = await queue.store_input(data, f"song{number}.wav")
    request = SeparationRequest(
        input=ref,
        stems="vocals",
        model="htdemucs",
        format="mp3",
        bitrate_kbps=64,
        requester=Requester(platform="test", user_id=str(number)),
    )
    job = await queue.submit(request, audio_s=args.audio_s)  # as the bots do: ETAs count it by its length
    outcome = Outcome(job.job_id, "lost", submitted=time.time())
    first = True
    try:
        async for progress in queue.watch(job.job_id, interval_s=args.poll_s, timeout_s=args.timeout_s):
            if first and progress.stage == Stage.queued and progress.eta_s is not None:
                outcome.eta_s = progress.eta_s
            first = False
    except TimeoutError:
        return outcome
    times = await queue.times(job.job_id)
    if times is None:
        return outcome
    result = await queue.result(job.job_id)
    outcome.status = result.status if result is not None else "lost"
    outcome.enqueued, outcome.started, outcome.finished = times.enqueued, times.started, times.finished
    return outcome


def overheads(done: list[Outcome], slots: int) -> list[float]:
    """Per job: the time it waited while a worker slot stood idle for it.

    At any moment with `idle` free slots, the `idle` oldest waiting jobs could be running:
    those accrue overhead. A slot is busy from a job's start to its finish (arq's stamps).
    """
    events: list[tuple[float, int, int]] = []  # (time, kind, job): finish 0, start 1, enqueue 2
    for i, o in enumerate(done):
        events += [(o.enqueued, 2, i), (o.started, 1, i), (o.finished, 0, i)]
    events.sort()
    waiting: list[tuple[float, int]] = []  # (enqueued, job), oldest first
    running = 0
    out = [0.0] * len(done)
    for k, (t, kind, i) in enumerate(events):
        if kind == 2:
            bisect.insort(waiting, (done[i].enqueued, i))
        elif kind == 1:
            waiting.remove((done[i].enqueued, i))
            running += 1
        else:
            running -= 1
        if k + 1 < len(events):
            for _, j in waiting[: max(0, slots - running)]:
                out[j] += events[k + 1][0] - t
    return out


def per_command(before: dict[str, object], after: dict[str, object], jobs: int) -> str:
    """The commands a job cost, most frequent first (commands inside Lua scripts count too)."""
    counts = {}
    for k, v in after.items():
        if k.startswith("cmdstat_") and isinstance(v, dict):
            old = before.get(k)
            counts[k[8:]] = int(v["calls"]) - (int(old["calls"]) if isinstance(old, dict) else 0)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    return ", ".join(f"{name} {n / max(1, jobs):.1f}" for name, n in top)


def redis_figures(info: dict[str, object]) -> tuple[int, int]:
    calls = sum(int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_") and isinstance(v, dict))
    net = int(str(info["total_net_input_bytes"])) + int(str(info["total_net_output_bytes"]))
    return calls, net


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(args: argparse.Namespace, url: str, tmp: Path) -> None:
    settings = Settings(redis_url=url, max_queue=args.users + 10, result_ttl_s=3600)
    board = await Board.connect(settings)
    queue = board.jobs
    raw = raw_redis(settings.redis_url)
    await raw.flushdb()
    env = stembot_env(
        STEMBOT_REDIS_URL=url,
        STEMBOT_ENGINE="benchmark",
        STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND=str(args.job_s / args.audio_s),
        STEMBOT_RESULT_TTL_S="3600",
        TMPDIR=str(tmp),
    )
    workers = [WorkerProcess(env, tmp / f"w{i}.log").start() for i in range(args.workers)]
    try:
        for w in workers:
            w.wait_ready(timeout=300)
        # every worker has announced its slot
        await wait_until(lambda: _announced(board, args.workers), timeout=300, interval=0.5)
        # Warm up: one job per worker, so the ETA's average job time exists, as on a running service.
        warm = argparse.Namespace(**{**vars(args), "poll_s": 0.5})
        await asyncio.gather(*(user(queue, -1 - i, song(-1 - i, args.audio_s), 0, warm) for i in range(args.workers)))
        songs = [song(i, args.audio_s) for i in range(args.users)]
        rng = random.Random(0)
        arrivals = sorted(rng.uniform(0, args.spread) for _ in range(args.users))
        await raw.config_resetstat()
        before_info = await raw.info("all")
        before = redis_figures(before_info)
        base_memory = int((await raw.info("memory"))["used_memory"])
        t0 = time.monotonic()
        load0 = os.getloadavg()[0]
        outcomes = await asyncio.gather(*(user(queue, i, songs[i], arrivals[i], args) for i in range(args.users)))
        took = time.monotonic() - t0
        after_info = await raw.info("all")
        after = redis_figures(after_info)
        artifact_bytes = await queue.store.stored_bytes()
    finally:
        for w in workers:
            w.stop()
        await raw.flushdb()
        await board.close()

    done = [o for o in outcomes if o.status == "done"]
    lost = sum(1 for o in outcomes if o.status == "lost")
    failed = sum(1 for o in outcomes if o.status in ("failed", "cancelled"))
    over_ms = [1000 * x for x in overheads(done, args.workers)]
    waits = [o.started - o.enqueued for o in done]
    jobs = [o.finished - o.started for o in done]
    eta_errors = [abs(o.eta_s - (o.started - o.enqueued)) / max(o.started - o.enqueued, 1.0) for o in done if o.eta_s]
    ops_per_job = (after[0] - before[0]) / max(1, len(done))
    bytes_per_job = (after[1] - before[1]) / max(1, len(done))
    peak_mb = int(str(after_info["used_memory_peak"])) / 2**20
    print(
        f"{args.users} users over {args.spread:.0f} s, {args.workers} workers (benchmark engine, "
        f"{args.job_s:.2f} s per job), {took:.0f} s, load average {load0:.1f} → {os.getloadavg()[0]:.1f}; "
        f"job time p50 {statistics.median(jobs or [0]):.2f} s; "
        f"wait p50 {statistics.median(waits or [0]):.1f} s, p95 {pct(waits, 0.95):.1f} s, max {max(waits or [0]):.1f} s"
    )
    if done:
        first, last = min(o.enqueued for o in done), max(o.finished for o in done)
        busy = sum(jobs) / (args.workers * (last - first))
        print(
            f"enqueued over {max(o.enqueued for o in done) - first:.0f} s, last job done at {last - first:.0f} s; "
            f"worker slots busy {100 * busy:.0f} % of that"
        )
    # arq stamps the enqueue time before its commands go out: a busy client adds its own lag here.
    lag_ms = [1000 * (o.submitted - o.enqueued) for o in done]
    print(
        f"queue overhead per job: p50 {pct(over_ms, 0.5):.1f} ms, p95 {pct(over_ms, 0.95):.1f} ms, "
        f"max {max(over_ms or [0]):.1f} ms; enqueue stamp → submit returned p95 {pct(lag_ms, 0.95):.0f} ms; "
        f"failed {failed}"
    )
    print(
        f"Redis: {ops_per_job:.1f} commands and {bytes_per_job / 1024:.1f} KiB per job, "
        f"{(after[0] - before[0]) / took:.0f} commands/s; peak memory {peak_mb:.1f} MiB "
        f"(at start {base_memory / 2**20:.1f} MiB; artifacts at the end {artifact_bytes / 2**20:.1f} MiB)"
    )
    print(f"commands per job: {per_command(before_info, after_info, len(done))}")
    print(
        f"ETA error (|ETA − wait| / max(wait, 1 s)) over {len(eta_errors)} users shown an ETA: "
        f"p50 {pct(eta_errors, 0.5):.2f}, p90 {pct(eta_errors, 0.9):.2f}"
    )
    print(
        f"workers={args.workers} users={args.users} completed={len(done)} lost={lost} "
        f"overhead_p95_ms={pct(over_ms, 0.95):.1f} redis_ops_per_job={ops_per_job:.1f} "
        f"eta_error_p50={pct(eta_errors, 0.5):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=150.0, help="users arrive over this many seconds")
    parser.add_argument("--audio-s", type=float, default=1.0, help="length of each user's song")
    parser.add_argument("--job-s", type=float, default=1.5, help="benchmark engine time per job")
    parser.add_argument("--poll-s", type=float, default=1.0, help="how often a user's status is read (a bot's)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="a job not finished by then is lost")
    parser.add_argument("--redis", default=None, help="an existing Redis instead of a private redis-server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stembot-scale-") as tmp:
        if args.redis:
            asyncio.run(run(args, args.redis, Path(tmp)))
            return
        on_private_redis(Path(tmp), lambda url: run(args, url, Path(tmp)))


if __name__ == "__main__":
    main()
