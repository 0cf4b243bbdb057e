"""The queue client: how frontends and the CLI hand work to workers through Redis (arq).

A job's id is the content key of its request (input hash + model + stems + format), so
two identical requests share one job, and a finished one is answered from its stored
result without running the model again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from arq.jobs import JobResult as ArqJobResult
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from core.artifacts import ArtifactStore, RedisArtifactStore, artifact_store_for
from core.audio import megabytes
from core.errors import InternalError, QueueFull, StorageFull, TooLarge, WorkerFailed
from core.jobs import ErrorInfo, InputRef, JobResult, Progress, Requester, SeparationRequest, Stage, StemArtifact
from core.room import Room
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

    def cycle_seconds(self) -> str:
        """Moving average of how long a worker slot takes per job, dispatch and all."""
        return f"{self.prefix}stats:cycle_seconds"

    def sequence(self) -> str:
        """The last queue score handed out: scores only grow, so the queue is first come, first served."""
        return f"{self.prefix}queue_sequence"

    def job_audio(self) -> str:
        """Seconds of audio each queued or running job will separate (0: a render from the cache)."""
        return f"{self.prefix}job_audio"

    def worker_rates(self) -> str:
        """Each worker's seconds of processing per second of audio, from the jobs it finished."""
        return f"{self.prefix}stats:worker_rates"

    def running(self) -> str:
        """Jobs a worker is running now, scored by their place in the queue."""
        return f"{self.prefix}running"

    def models(self) -> str:
        """Model names the live workers can load, scored by when that lapses."""
        return f"{self.prefix}models"

    def live_workers(self) -> str:
        """`host:pid:slots` of each live worker, scored by when its presence lapses."""
        return f"{self.prefix}live_workers"


@contextlib.contextmanager
def refusing_when_full() -> Iterator[None]:
    """A write Redis refused for want of memory becomes the user's "out of storage" message."""
    try:
        yield
    except redis_errors.OutOfMemoryError as exc:
        # Only the server's words: redis-py puts a failed pipeline command's arguments (a
        # stem's bytes) into the text, and this detail may be logged.
        raise StorageFull(detail=str(exc).rpartition("caused error: ")[2][:200]) from None


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


def _result_of(job_id: str, info: ArqJobResult) -> JobResult:
    model = str(info.args[0].get("model", "")) if info.args and isinstance(info.args[0], dict) else ""
    return _result_from_arq(job_id, info.success, info.result, model)


def _result_from_arq(job_id: str, success: bool, value: object, model: str) -> JobResult:
    if success and isinstance(value, dict):
        return JobResult.model_validate(value)
    # arq stores an exception here: max tries exceeded after crashes, or a timeout.
    err = WorkerFailed("Separation failed on the worker. Please try again later.", detail=repr(value))
    return JobResult(job_id=job_id, status="failed", model=model, error=ErrorInfo.from_exception(err))


# Where a job stands (KEYS: queue, running, live workers, job seconds, the job's in-progress
# key, cycle seconds, job audio, worker rates; ARGV: job id, now). Returns its rank, how many
# of those ahead run, whether it runs, the live slots, the running count, the average slot
# time per job; the audio seconds of the waiting jobs ahead and how many of them have none
# recorded; the audio seconds of the running jobs; and the live workers' throughput (audio
# seconds a second, all slots together, "0" when none has measured its rate yet). Reals go
# back as strings: Redis would truncate them.
_PLACE = """
local rank, ahead, ahead_audio, unknown = -1, 0, 0, 0
local running_ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local is_running = {}
for _, id in ipairs(running_ids) do is_running[id] = true end
-- the audio of `ids`, in HMGETs of at most 1000 (Lua's unpack has a limit)
local function audio_of(ids)
  local out = {}
  for i = 1, #ids, 1000 do
    local values = redis.call('HMGET', KEYS[7], unpack(ids, i, math.min(i + 999, #ids)))
    for _, v in ipairs(values) do out[#out + 1] = v end
  end
  return out
end
if ARGV[1] ~= '' then
  local r = redis.call('ZRANK', KEYS[1], ARGV[1])
  if r then
    rank = r
    ahead = redis.call('ZCOUNT', KEYS[2], '-inf', redis.call('ZSCORE', KEYS[1], ARGV[1]))
    if r > 0 then
      local waiting = {}
      for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, r - 1)) do
        if not is_running[id] then waiting[#waiting + 1] = id end
      end
      for _, a in ipairs(audio_of(waiting)) do
        if a then ahead_audio = ahead_audio + tonumber(a) else unknown = unknown + 1 end
      end
    end
  end
end
local running_audio = 0
for _, a in ipairs(audio_of(running_ids)) do
  if a then running_audio = running_audio + tonumber(a) end
end
local slots, rated, throughput = 0, 0, 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], '+inf')) do
  local name, n = string.match(m, '^(.*):(%d+)$')
  n = tonumber(n) or 0
  slots = slots + n
  local rate = tonumber(name and redis.call('HGET', KEYS[8], name) or '0') or 0
  if rate > 0 then
    rated = rated + n
    throughput = throughput + n / rate
  end
end
-- slots without a measured rate yet are counted at the others' mean rate
if rated > 0 then throughput = throughput * slots / rated end
local avg = redis.call('GET', KEYS[6]) or redis.call('GET', KEYS[4]) or false
return {rank, ahead, redis.call('EXISTS', KEYS[5]), slots, redis.call('ZCARD', KEYS[2]), avg,
        tostring(ahead_audio), unknown, tostring(running_audio), tostring(throughput)}
"""


# The next queue score (KEYS: the last one; ARGV: now in ms): now, or one past the last.
_NEXT_SCORE = """
local score = math.max(tonumber(ARGV[1]), tonumber(redis.call('GET', KEYS[1]) or '0') + 1)
redis.call('SET', KEYS[1], string.format('%d', score))
return score
"""

# A requester joins a job (KEYS: waiters, cancel flag; ARGV: requester, ttl): a cancel by
# the last waiter before it no longer stands.
_JOIN = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
"""

# A requester withdraws (KEYS: waiters, cancel flag, result; ARGV: requester or '', ttl): the
# job is told to stop only when nobody waits any more and it has not finished.
_CANCEL = """
if ARGV[1] ~= '' then
  redis.call('SREM', KEYS[1], ARGV[1])
  if redis.call('SCARD', KEYS[1]) > 0 then return 0 end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Place:
    position: int | None
    slots: int
    running: int
    avg_job_s: float | None
    ahead_audio_s: float = 0.0  # audio of the waiting jobs ahead
    ahead_unknown: int = 0  # waiting jobs ahead whose audio length is not recorded
    running_audio_s: float = 0.0
    throughput: float = 0.0  # audio seconds the live workers process a second (0: not measured)

    def eta_s(self) -> float | None:
        """The wait before this job starts: by the workers' measured rates when every job
        ahead has a known length, else by the average slot time."""
        if self.throughput > 0 and self.ahead_unknown == 0:
            return estimate_wait_by_rate(
                self.position, self.slots, self.running, self.ahead_audio_s, self.running_audio_s, self.throughput
            )
        return estimate_wait(self.position, self.avg_job_s, self.slots, self.running)


def estimate_wait_by_rate(
    position: int | None, slots: int, running: int, ahead_audio_s: float, running_audio_s: float, throughput: float
) -> float | None:
    """Wait before a job at `position` starts, from the audio ahead of it and the live workers'
    `throughput` (audio seconds they process a second, all slots together).

    Idle slots take the first jobs at once. Otherwise the job starts once the workers have
    got through the waiting jobs ahead and, on average, half of the running ones. None with
    no live worker: nothing can be promised then."""
    if position is None or slots == 0 or throughput <= 0:
        return None
    if position - max(0, slots - running) <= 0:
        return 0.0
    return (ahead_audio_s + running_audio_s / 2) / throughput


def estimate_wait(position: int | None, avg_job_s: float | None, slots: int, running: int) -> float | None:
    """Rough wait before a job at `position` starts.

    Idle slots take the first jobs at once; after that the live workers free a slot every
    `average job time / slots` seconds, the first after about half of that. With no live
    worker, one job at a time is the guess.
    """
    if position is None or avg_job_s is None:
        return None
    if slots == 0:
        return avg_job_s * max(position, 1)
    turns = max(position, 1) - max(0, slots - running)
    return 0.0 if turns <= 0 else avg_job_s * (turns - 0.5) / slots


class QueueClient:
    """Submit separation jobs, follow their progress, fetch results, cancel them."""

    def __init__(self, pool: ArqRedis, settings: Settings, store: ArtifactStore | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.store = store or artifact_store_for(settings, pool)
        self.keys = JobKeys(settings.key_prefix)
        self._place_script = pool.register_script(_PLACE)
        self.room = Room(pool, settings)
        self._join_script = pool.register_script(_JOIN)
        self._score_script = pool.register_script(_NEXT_SCORE)
        self._cancel_script = pool.register_script(_CANCEL)

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
        await self.check_room(len(data))
        with refusing_when_full():
            if not await self.store.touch(key, self.settings.result_ttl_s):
                await self.store.put(key, data, self.settings.result_ttl_s)
        return InputRef(
            artifact_key=key, sha256=digest, filename=filename, size_bytes=len(data), title=title, artist=artist
        )

    async def check_room(self, extra_bytes: int = 0) -> None:
        """Refuse new work unless `extra_bytes` more fit under `redis_full_ratio` of Redis's
        `maxmemory`, beside the room every accepted job holds for its result (see core.room)."""
        await self.room.check(extra_bytes)
        store = self.store
        if isinstance(store, RedisArtifactStore) and store.budget_bytes is not None:
            # What the budget cannot evict: pinned inputs and stems, and the stems to come.
            held = await store.pinned_bytes() + await self.room.reserved_bytes()
            if held + extra_bytes > store.budget_bytes:
                raise StorageFull(detail=f"{held} bytes of the artifact budget held, {extra_bytes} more asked")

    async def submit(
        self, request: SeparationRequest, expected_bytes: int = 0, audio_s: float | None = None
    ) -> Submission:
        """Queue `request` (or join or answer it); `expected_bytes`, an estimate of its stems'
        size, is held in Redis for the job until its worker lets go of it. `audio_s`, the
        seconds of audio the model will separate (0: a render from cached sources), is what
        ETAs count the job by; unknown (None), the ETA of those behind it falls back on the
        average slot time."""
        with refusing_when_full():
            return await self._submit(request, expected_bytes, audio_s)

    async def _submit(self, request: SeparationRequest, expected_bytes: int, audio_s: float | None) -> Submission:
        job_id = request.content_key()
        if await self._reusable_result(job_id) is not None:
            await self._add_waiter(job_id, request.requester)
            return Submission(job_id, "cached")
        if await self.pool.zcard(self.settings.queue_name) >= self.settings.max_queue:
            raise QueueFull("The queue is full right now. Please try again in a few minutes.")
        await self._reserve(job_id, expected_bytes)
        if audio_s is not None:
            await self.pool.hset(self.keys.job_audio(), job_id, f"{max(0.0, audio_s):.3f}")  # type: ignore[misc]
            await self.pool.expire(self.keys.job_audio(), self.settings.result_ttl_s)
        # Until the job ends its input is not evicted, however full the artifact budget gets.
        await self.store.pin(request.input.artifact_key, job_id, self.settings.result_ttl_s)
        job = await self.pool.enqueue_job(
            SEPARATE_FUNCTION,
            request.model_dump(mode="json"),
            _job_id=job_id,
            _queue_name=self.settings.queue_name,
            _expires=self.settings.result_ttl_s,
            _defer_until=await self._next_score(),
        )
        await self._add_waiter(job_id, request.requester)
        if job is None:  # someone else wants this too (and a cancel of theirs no longer stands)
            return Submission(job_id, "joined")
        await self.set_progress(Progress(job_id=job_id, stage=Stage.queued))
        return Submission(job_id, "queued")

    async def _reserve(self, job_id: str, expected_bytes: int) -> None:
        """Hold room for the job's result, or refuse it when there is none left. (A job that
        finished meanwhile holds none for long: reservations of finished jobs are dropped.)"""
        expected_bytes = min(expected_bytes, self.settings.max_job_output_bytes)
        budget = self.store.budget_bytes if isinstance(self.store, RedisArtifactStore) else None
        if budget is not None and expected_bytes > budget:
            raise TooLarge(
                f"These stems would come to about {megabytes(expected_bytes)}, more than I can keep at once "
                f"({megabytes(budget)}). Ask for fewer stems, a shorter section, or a compressed format such as mp3."
            )
        reserved = await self.room.reserve(job_id, expected_bytes)
        try:
            await self.check_room()
        except BaseException:
            if reserved:
                await self.room.release(job_id)
            raise

    async def _next_score(self) -> datetime:
        """The queue score of a job submitted now: arq's own (the millisecond) ties for jobs
        submitted in the same one, which arq then orders by id, so a later job could go first;
        this one is that millisecond or, on a tie, one past the last score handed out."""
        score = await self._score_script(keys=[self.keys.sequence()], args=[int(time.time() * 1000)])
        return datetime.fromtimestamp(int(score) / 1000, UTC)

    async def _reusable_result(self, job_id: str) -> JobResult | None:
        """A stored result that can answer a new request, or None after clearing a stale one.

        A refusal of the input stands as long as the result; a bug met by it only for
        `internal_error_ttl_s`, so a fixed worker gets to try it again the same day."""
        info = await Job(job_id, self.pool, _queue_name=self.settings.queue_name).result_info()
        if info is None:
            return None
        result = _result_of(job_id, info)
        error = result.error
        reusable = (
            result.status == "done"
            and await self.store.exists(*(s.artifact_key for s in result.stems)) == len(result.stems)
        ) or (result.status == "failed" and error is not None and not error.to_exception().retryable)
        if error is not None and error.code == InternalError.code:
            age_s = (datetime.now(UTC) - info.finish_time).total_seconds()
            reusable = age_s < self.settings.internal_error_ttl_s
        if reusable:
            return result
        await self.pool.delete(result_key_prefix + job_id, self.keys.progress(job_id), self.keys.cancel(job_id))
        return None

    async def _add_waiter(self, job_id: str, requester: Requester) -> None:
        """`requester` waits for the job now: a cancel of the last one before it no longer stands."""
        keys = [self.keys.waiters(job_id), self.keys.cancel(job_id)]
        await self._join_script(keys=keys, args=[requester.key, self.settings.result_ttl_s])

    @staticmethod
    def delivery_holder(job_id: str) -> str:
        """Who pins a finished job's stems (see worker.tasks) until its chats have them."""
        return f"deliver:{job_id}"

    async def delivered(self, job_id: str, requester: Requester) -> None:
        """`requester` has its stems (or its answer): when nobody else waits, unpin them, so
        the budget may evict them before their delivery grace (`result_pin_s`) ends."""
        key = self.keys.waiters(job_id)
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.srem(key, requester.key)
            pipe.scard(key)
            _, left = await pipe.execute()
        if not left:
            await self.store.release(self.delivery_holder(job_id))

    async def set_progress(self, progress: Progress) -> None:
        await self.pool.set(
            self.keys.progress(progress.job_id), progress.model_dump_json(), ex=self.settings.result_ttl_s
        )

    async def position(self, job_id: str) -> int | None:
        """1 = next to start, 0 = running now, None = not in the queue."""
        return (await self._place(job_id)).position

    async def _place(self, job_id: str) -> Place:
        """Where a job stands and what the live workers are doing, in one round trip.

        arq keeps running jobs in the queue until they end; the workers' `running` set says
        which of those ahead are running, whatever the queue's length.
        """
        keys = [self.settings.queue_name, self.keys.running(), self.keys.live_workers(), self.keys.job_seconds()]
        keys += [in_progress_key_prefix + job_id, self.keys.cycle_seconds(), self.keys.job_audio()]
        (
            rank,
            running_ahead,
            is_running,
            slots,
            running,
            avg,
            ahead_audio,
            unknown,
            running_audio,
            throughput,
        ) = await self._place_script(keys=[*keys, self.keys.worker_rates()], args=[job_id, time.time()])
        position = None if rank < 0 else 0 if is_running else max(1, 1 + rank - running_ahead)
        return Place(
            position,
            int(slots),
            int(running),
            float(avg) if avg else None,
            float(ahead_audio),
            int(unknown),
            float(running_audio),
            float(throughput),
        )

    async def capacity(self) -> tuple[int, int]:
        """(job slots of the live workers, jobs running now)."""
        place = await self._place("")
        return place.slots, place.running

    async def job_started(self, job_id: str, score: int) -> None:
        """A worker took the job (called by the worker, with the job's queue score)."""
        await self.pool.zadd(self.keys.running(), {job_id: score})

    async def job_ended(self, job_id: str) -> None:
        """A worker let go of the job; once it has a result, its input may be evicted again."""
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.running(), job_id)
            pipe.exists(result_key_prefix + job_id)
            _, finished = await pipe.execute()
        if finished:
            await self.pool.hdel(self.keys.job_audio(), job_id)  # type: ignore[misc]
            await self.room.release(job_id)
            await self.store.release(job_id)

    async def record_cycle(self, seconds: float) -> None:
        """Fold one job's slot time (from its enqueue, or the slot freeing, to its end) into the ETA's average.

        Unlike the job's own time it holds what the queue adds: polling, claiming, storing
        results, and a host too busy to run the worker at once.
        """
        key = self.keys.cycle_seconds()
        old = await self.pool.get(key)
        avg = seconds if old is None else 0.8 * float(old) + 0.2 * seconds
        await self.pool.set(key, f"{avg:.3f}")

    async def record_rate(self, worker: str, seconds: float, audio_s: float) -> None:
        """Fold a finished job's seconds of processing per second of audio into `worker`'s rate."""
        if audio_s <= 0 or not worker:
            return
        key = self.keys.worker_rates()
        old = await self.pool.hget(key, worker)  # type: ignore[misc]
        rate = seconds / audio_s if old is None else 0.7 * float(old) + 0.3 * seconds / audio_s
        await self.pool.hset(key, worker, f"{rate:.5f}")  # type: ignore[misc]

    async def prune_running(self) -> None:
        """Forget jobs marked running whose worker died without saying so (arq's claim lapsed)."""
        members = [m.decode() for m in await self.pool.zrange(self.keys.running(), 0, -1)]
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in members:
                pipe.exists(in_progress_key_prefix + job_id)
            claimed = await pipe.execute()
        stale = [job_id for job_id, here in zip(members, claimed, strict=True) if not here]
        if stale:
            await self.pool.zrem(self.keys.running(), *stale)

    async def announce_worker(self, name: str, slots: int, ttl_s: float) -> None:
        """`name` is alive with `slots` job slots for the next `ttl_s` seconds (ETAs count them)."""
        now = time.time()
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.live_workers(), {f"{name}:{slots}": now + ttl_s})
            pipe.zremrangebyscore(self.keys.live_workers(), "-inf", now)
            await pipe.execute()

    async def announce_models(self, names: list[str], ttl_s: float) -> None:
        """A worker can load `names` for the next `ttl_s` seconds (the bots offer only those)."""
        if names:
            await self.pool.zadd(self.keys.models(), dict.fromkeys(names, time.time() + ttl_s))

    async def available_models(self) -> set[str] | None:
        """What the live workers can load; with none live, what the last ones could; None
        when no worker ever said (then nothing is known to be missing)."""
        live = await self.pool.zrangebyscore(self.keys.models(), time.time(), "+inf")
        known = live or await self.pool.zrange(self.keys.models(), 0, -1)
        return {m.decode() for m in known} if known else None

    async def withdraw_worker(self, name: str, slots: int) -> None:
        await self.pool.zrem(self.keys.live_workers(), f"{name}:{slots}")
        await self.pool.hdel(self.keys.worker_rates(), name)  # type: ignore[misc]

    async def eta_s(self, position: int | None) -> float | None:
        """Rough wait before a job at `position` starts (see `estimate_wait`)."""
        place = await self._place("")
        return estimate_wait(position, place.avg_job_s, place.slots, place.running)

    async def progress(self, job_id: str) -> Progress | None:
        raw = await self.pool.get(self.keys.progress(job_id))
        if raw is None:
            return None
        progress = Progress.model_validate_json(raw)
        if progress.stage == Stage.queued:
            place = await self._place(job_id)
            progress.queue_position = place.position
            progress.workers = place.slots
            progress.eta_s = place.eta_s() if place.slots else None
        return progress

    async def result(self, job_id: str) -> JobResult | None:
        info = await Job(job_id, self.pool, _queue_name=self.settings.queue_name).result_info()
        return None if info is None else _result_of(job_id, info)

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

        Returns True when the job itself was told to stop. Joining and cancelling are each
        one script, so the stop flag stands exactly while nobody waits.
        """
        keys = [self.keys.waiters(job_id), self.keys.cancel(job_id), result_key_prefix + job_id]
        who = "" if requester is None else requester.key
        return bool(await self._cancel_script(keys=keys, args=[who, self.settings.result_ttl_s]))

    async def fetch(self, artifact: StemArtifact) -> bytes:
        return await self.store.get(artifact.artifact_key)
