"""The queue client: how frontends and the CLI hand work to workers through Redis (arq).

A job's id is the content key of its request (input hash + model + stems + format), so
two identical requests share one job, and a finished one is answered from its stored
result without running the model again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from core.artifacts import ArtifactStore, artifact_store_for
from core.errors import QueueFull, WorkerFailed
from core.jobs import ErrorInfo, InputRef, JobResult, Progress, Requester, SeparationRequest, Stage, StemArtifact
from core.settings import Settings

SEPARATE_FUNCTION = "separate"


class JobKeys:
    """Redis keys stembot keeps beside arq's own, one family per job."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def progress(self, job_id: str) -> str:
        return f"{self.prefix}progress:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}cancel:{job_id}"

    def waiters(self, job_id: str) -> str:
        return f"{self.prefix}waiters:{job_id}"

    def job_seconds(self) -> str:
        return f"{self.prefix}stats:job_seconds"


@dataclass(frozen=True)
class Submission:
    job_id: str
    state: Literal["queued", "joined", "cached"]


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


def _result_from_arq(job_id: str, success: bool, value: object, model: str) -> JobResult:
    if success and isinstance(value, dict):
        return JobResult.model_validate(value)
    # arq stores an exception here: max tries exceeded after crashes, or a timeout.
    err = WorkerFailed("Separation failed on the worker. Please try again later.", detail=repr(value))
    return JobResult(job_id=job_id, status="failed", model=model, error=ErrorInfo.from_exception(err))


class QueueClient:
    """Submit separation jobs, follow their progress, fetch results, cancel them."""

    def __init__(self, pool: ArqRedis, settings: Settings, store: ArtifactStore | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.store = store or artifact_store_for(settings, pool)
        self.keys = JobKeys(settings.key_prefix)

    @classmethod
    async def connect(cls, settings: Settings) -> QueueClient:
        pool = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
        return cls(pool, settings)

    async def close(self) -> None:
        await self.pool.aclose()

    async def store_input(
        self, data: bytes, filename: str, title: str | None = None, artist: str | None = None
    ) -> InputRef:
        digest = hashlib.sha256(data).hexdigest()
        key = f"input:{digest}"
        if not await self.store.touch(key, self.settings.result_ttl_s):
            await self.store.put(key, data, self.settings.result_ttl_s)
        return InputRef(
            artifact_key=key, sha256=digest, filename=filename, size_bytes=len(data), title=title, artist=artist
        )

    async def submit(self, request: SeparationRequest) -> Submission:
        job_id = request.content_key()
        if await self._reusable_result(job_id) is not None:
            await self._add_waiter(job_id, request.requester)
            return Submission(job_id, "cached")
        if await self.pool.zcard(self.settings.queue_name) >= self.settings.max_queue:
            raise QueueFull("The queue is full right now. Please try again in a few minutes.")
        job = await self.pool.enqueue_job(
            SEPARATE_FUNCTION,
            request.model_dump(mode="json"),
            _job_id=job_id,
            _queue_name=self.settings.queue_name,
            _expires=self.settings.result_ttl_s,
        )
        await self._add_waiter(job_id, request.requester)
        if job is None:
            # Someone else wants this too: make sure a stale cancel does not stop it.
            await self.pool.delete(self.keys.cancel(job_id))
            return Submission(job_id, "joined")
        await self.set_progress(Progress(job_id=job_id, stage=Stage.queued))
        return Submission(job_id, "queued")

    async def _reusable_result(self, job_id: str) -> JobResult | None:
        """A stored result that can answer a new request, or None after clearing a stale one."""
        result = await self.result(job_id)
        if result is None:
            return None
        reusable = (
            result.status == "done"
            and await self.store.exists(*(s.artifact_key for s in result.stems)) == len(result.stems)
        ) or (result.status == "failed" and result.error is not None and not result.error.to_exception().retryable)
        if reusable:
            return result
        await self.pool.delete(result_key_prefix + job_id, self.keys.progress(job_id), self.keys.cancel(job_id))
        return None

    async def _add_waiter(self, job_id: str, requester: Requester) -> None:
        key = self.keys.waiters(job_id)
        await self.pool.sadd(key, requester.key)  # type: ignore[misc]
        await self.pool.expire(key, self.settings.result_ttl_s)

    async def set_progress(self, progress: Progress) -> None:
        await self.pool.set(
            self.keys.progress(progress.job_id), progress.model_dump_json(), ex=self.settings.result_ttl_s
        )

    async def position(self, job_id: str) -> int | None:
        """1 = next to start, 0 = running now, None = not in the queue."""
        queue = self.settings.queue_name
        score = await self.pool.zscore(queue, job_id)
        if score is None:
            return None
        ahead = [j.decode() for j in await self.pool.zrangebyscore(queue, "-inf", score)]
        async with self.pool.pipeline(transaction=False) as pipe:
            for other in ahead:
                pipe.exists(in_progress_key_prefix + other)
            running = dict(zip(ahead, await pipe.execute(), strict=True))
        if running.get(job_id):
            return 0
        return 1 + sum(1 for other in ahead if other != job_id and not running[other])

    async def eta_s(self, position: int | None) -> float | None:
        """Rough wait: jobs ahead times the recent average job time."""
        avg = await self.pool.get(self.keys.job_seconds())
        if position is None or avg is None:
            return None
        return float(avg) * max(position, 1)

    async def progress(self, job_id: str) -> Progress | None:
        raw = await self.pool.get(self.keys.progress(job_id))
        if raw is None:
            return None
        progress = Progress.model_validate_json(raw)
        if progress.stage == Stage.queued:
            progress.queue_position = await self.position(job_id)
            progress.eta_s = await self.eta_s(progress.queue_position)
        return progress

    async def result(self, job_id: str) -> JobResult | None:
        info = await Job(job_id, self.pool, _queue_name=self.settings.queue_name).result_info()
        if info is None:
            return None
        model = str(info.args[0].get("model", "")) if info.args and isinstance(info.args[0], dict) else ""
        return _result_from_arq(job_id, info.success, info.result, model)

    async def status(self, job_id: str) -> JobStatus:
        return await Job(job_id, self.pool, _queue_name=self.settings.queue_name).status()

    async def watch(
        self, job_id: str, interval_s: float = 0.5, timeout_s: float | None = None
    ) -> AsyncIterator[Progress]:
        """Yield each new progress state until the job ends; the last one is final."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: tuple[Stage, float, int | None] | None = None
        while True:
            result = await self.result(job_id)
            if result is not None:
                yield result.final_progress()
                return
            progress = await self.progress(job_id)
            if progress is None and await self.status(job_id) == JobStatus.not_found:
                yield Progress(job_id=job_id, stage=Stage.failed)
                return
            if progress is not None:
                state = (progress.stage, round(progress.percent, 1), progress.queue_position)
                if state != last:
                    last = state
                    yield progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")
            await asyncio.sleep(interval_s)

    async def wait_result(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        async for _ in self.watch(job_id, timeout_s=timeout_s):
            pass
        result = await self.result(job_id)
        if result is None:
            err = WorkerFailed("The job was lost before it could run. Please send it again.")
            return JobResult(job_id=job_id, status="failed", model="", error=ErrorInfo.from_exception(err))
        return result

    async def cancel(self, job_id: str, requester: Requester | None = None) -> bool:
        """Withdraw a requester; the work stops when nobody is left waiting for it.

        Returns True when the job itself was told to stop.
        """
        if requester is not None:
            await self.pool.srem(self.keys.waiters(job_id), requester.key)  # type: ignore[misc]
            if await self.pool.scard(self.keys.waiters(job_id)) > 0:  # type: ignore[misc]
                return False
        if await self.result(job_id) is not None:
            return False
        await self.pool.set(self.keys.cancel(job_id), b"1", ex=self.settings.result_ttl_s)
        return True

    async def fetch(self, artifact: StemArtifact) -> bytes:
        return await self.store.get(artifact.artifact_key)
