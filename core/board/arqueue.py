"""arq, in one place: the connection, the queue's records of one job, and the worker class.

Everything else on the board speaks of jobs in stembot's words (`Outcome`, `JobState`);
only this module knows arq's key names, its `Job` API and its `Worker`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from arq import create_pool, func
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import Worker
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from core.settings import Settings

SEPARATE_FUNCTION = "separate"
# The key prefixes of arq's own records, for the board's Lua scripts that read them.
IN_PROGRESS_PREFIX = in_progress_key_prefix
RESULT_PREFIX = result_key_prefix

Hook = Callable[[dict[str, Any]], Awaitable[None]]


def redis_settings(settings: Settings) -> RedisSettings:
    conf = RedisSettings.from_dsn(settings.redis_url)
    # Every command waits out a Redis restart (about 30 s of backoff) instead of failing:
    # otherwise a job that ends, or a worker poll that comes, while Redis is down kills the
    # job, or the worker process with it.
    conf.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20)
    # redis-py adds these to the retry's errors; OSError because a refused connect reaches
    # the retry as ConnectionRefusedError, not as redis' ConnectionError.
    conf.retry_on_error = [redis_errors.ConnectionError, redis_errors.TimeoutError, OSError]
    return conf


async def connect(settings: Settings) -> ArqRedis:
    return await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)


class JobState(StrEnum):
    waiting = "waiting"  # queued, or deferred to its turn
    running = "running"
    finished = "finished"
    unknown = "unknown"  # never queued, or its records expired


_STATES = {
    JobStatus.deferred: JobState.waiting,
    JobStatus.queued: JobState.waiting,
    JobStatus.in_progress: JobState.running,
    JobStatus.complete: JobState.finished,
    JobStatus.not_found: JobState.unknown,
}


@dataclass(frozen=True)
class Outcome:
    """What a worker left for a job: the function's return value, or the exception arq kept."""

    success: bool
    value: object
    payload: dict[str, Any]
    enqueued_at: datetime
    started_at: datetime
    finished_at: datetime


class ArqJobs:
    """One queue's jobs as arq records them."""

    def __init__(self, pool: ArqRedis, queue_name: str) -> None:
        self._pool = pool
        self.queue_name = queue_name

    def _job(self, job_id: str) -> Job:
        return Job(job_id, self._pool, _queue_name=self.queue_name)

    async def enqueue(self, job_id: str, payload: dict[str, Any], expires_s: int, at: datetime) -> bool:
        """Queue `payload` under `job_id` to start at `at`; False if that job is queued or kept already."""
        job = await self._pool.enqueue_job(
            SEPARATE_FUNCTION, payload, _job_id=job_id, _queue_name=self.queue_name, _expires=expires_s, _defer_until=at
        )
        return job is not None

    async def outcome(self, job_id: str) -> Outcome | None:
        info = await self._job(job_id).result_info()
        if info is None:
            return None
        payload = info.args[0] if info.args and isinstance(info.args[0], dict) else {}
        return Outcome(info.success, info.result, payload, info.enqueue_time, info.start_time, info.finish_time)

    async def payload(self, job_id: str) -> dict[str, Any] | None:
        """The payload of a queued job (None: not queued)."""
        info = await self._job(job_id).info()
        if info is None or not info.args or not isinstance(info.args[0], dict):
            return None
        return info.args[0]

    async def state(self, job_id: str) -> JobState:
        return _STATES[await self._job(job_id).status()]

    async def has_outcome(self, job_id: str) -> bool:
        return bool(await self._pool.exists(result_key_prefix + job_id))

    async def forget_outcome(self, job_id: str) -> None:
        await self._pool.delete(result_key_prefix + job_id)

    async def waiting_or_running(self) -> int:
        """Jobs in the queue: arq keeps a running one there until it ends."""
        return int(await self._pool.zcard(self.queue_name))

    async def still_claimed(self, job_ids: list[str]) -> list[bool]:
        async with self._pool.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(in_progress_key_prefix + job_id)
            return [bool(here) for here in await pipe.execute()]

    async def keep_claim(self, job_id: str, ttl_s: float) -> None:
        """A running job's worker is alive: its claim lasts `ttl_s` more."""
        await self._pool.pexpire(in_progress_key_prefix + job_id, int(ttl_s * 1000))

    async def score(self, job_id: str) -> int | None:
        score = await self._pool.zscore(self.queue_name, job_id)
        return None if score is None else int(score)


class StembotWorker(Worker):
    """arq's Worker, which looks for the next job as soon as one ends, not at its next poll,
    and skips the jobs the board records as running.

    The wake is a done-callback on each job's task, added after arq's own (which frees the
    slot): asyncio runs a task's callbacks in the order they were added, so the slot is free
    when it fires. It asks arq for jobs through `start_jobs`, the public method arq's poll
    calls. (arq's `after_job_end` hook cannot do it: it runs inside the job's task, before
    arq frees the slot, so the worker would still count itself full.)
    """

    def __init__(self, *args: Any, running_key: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running_key = running_key
        self._wakes: set[asyncio.Task[None]] = set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Skip the jobs the workers record as running before trying to claim any.

        arq keeps running jobs in the queue, at its head, and tries each id in turn with a
        WATCH/MULTI claim of several round trips: with twenty workers, every dispatch would
        first walk past the twenty running jobs. One read of the running set saves that.
        """
        if len(job_ids) > 1:
            running = set(await self.pool.zrange(self._running_key, 0, -1))
            job_ids = [j for j in job_ids if j not in running]
        before = set(self.tasks.values())
        await super().start_jobs(job_ids)
        for task in set(self.tasks.values()) - before:
            task.add_done_callback(self._wake)

    def _wake(self, _: object) -> None:
        main = self.main_task
        # Not while shutting down: the cancelled jobs end here too, and must not start others.
        if self.allow_pick_jobs and main is not None and not main.done() and not main.cancelling():
            wake = self.loop.create_task(self._next_jobs())
            self._wakes.add(wake)
            wake.add_done_callback(self._wakes.discard)

    async def _next_jobs(self) -> None:
        """What arq's poll does for new jobs: the queue's due ids, then `start_jobs`."""
        if self.job_counter >= self.max_jobs:
            return
        now_ms = int(time.time() * 1000)
        job_ids = await self.pool.zrangebyscore(
            self.queue_name, min=float("-inf"), max=now_ms, start=0, num=self.queue_read_limit
        )
        await self.start_jobs(job_ids)


@dataclass(frozen=True)
class WorkerHooks:
    on_startup: Hook
    on_shutdown: Hook
    on_job_start: Hook
    after_job_end: Hook


def build_worker(
    settings: Settings,
    separate: Callable[..., Awaitable[Any]],
    hooks: WorkerHooks,
    running_key: str,
    **overrides: Any,
) -> Worker:
    """An arq Worker for `separate` configured from stembot settings; overrides go straight to
    arq. `running_key`: the sorted set of the jobs the workers run now (core.board.workers)."""
    options: dict[str, Any] = {
        "functions": [
            func(
                cast(Any, separate),  # arq types it as its own WorkerCoroutine protocol
                name=SEPARATE_FUNCTION,
                timeout=settings.job_timeout_s,  # type: ignore[arg-type]
                keep_result=settings.result_ttl_s,
                max_tries=settings.max_tries,
            )
        ],
        "on_startup": hooks.on_startup,
        "on_shutdown": hooks.on_shutdown,
        "on_job_start": hooks.on_job_start,
        "after_job_end": hooks.after_job_end,
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout_s,
        "keep_result": settings.result_ttl_s,
        "max_tries": settings.max_tries,
        "health_check_interval": 30,
        "health_check_key": f"{settings.key_prefix}health:{settings.queue_name}",
        "poll_delay": settings.worker_poll_s,
        "ctx": {"settings": settings},
    }
    options.update(overrides)
    return StembotWorker(running_key=running_key, **options)


def redis_of(ctx: dict[str, Any]) -> ArqRedis:
    """The connection arq opened for a worker, from a hook's or a job's context."""
    pool: ArqRedis = ctx["redis"]
    return pool
