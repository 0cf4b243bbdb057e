"""Jobs: how frontends and the CLI hand work to workers, and how workers report back:
submit, join and cancel (the waiters and the stop flag), progress, finish, results.

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

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from core.board.arqueue import RESULT_PREFIX, ArqJobs, JobState, Outcome
from core.board.artifacts import RedisArtifactStore
from core.board.events import Events
from core.board.room import Room
from core.board.workers import WorkerRegistry
from core.domain.errors import InternalError, QueueFull, StorageFull, TooLarge, WorkerFailed
from core.domain.jobs import ErrorInfo, InputRef, JobResult, Progress, Requester, SeparationRequest, Stage, StemArtifact
from core.media.artifacts import ArtifactStore
from core.media.audio import megabytes
from core.settings import Settings


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


@dataclass(frozen=True)
class JobTimes:
    enqueued: float  # Unix times
    started: float
    finished: float


def _result_of(job_id: str, outcome: Outcome) -> JobResult:
    if outcome.success and isinstance(outcome.value, dict):
        return JobResult.model_validate(outcome.value)
    model = str(outcome.payload.get("model", ""))
    value = outcome.value
    # arq stores an exception here: max tries exceeded after crashes, or a timeout.
    err = WorkerFailed("Separation failed on the worker. Please try again later.", detail=repr(value))
    return JobResult(job_id=job_id, status="failed", model=model, error=ErrorInfo.from_exception(err))


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


class JobQueue:
    """Submit separation jobs, follow their progress, fetch results, cancel them; and, for
    the worker, the verbs of a running job (progress, the stop flag, finish)."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        arq: ArqJobs,
        workers: WorkerRegistry,
        room: Room,
        store: ArtifactStore,
        events: Events,
    ) -> None:
        self._redis = redis
        self.settings = settings
        self._arq = arq
        self._workers = workers
        self._room = room
        self.store = store
        self._events = events
        prefix = settings.key_prefix
        self._progress = f"{prefix}progress:"
        self._cancel = f"{prefix}cancel:"
        self._waiters = f"{prefix}waiters:"
        # The last queue score handed out: scores only grow, so the queue is first come, first served.
        self._sequence = f"{prefix}queue_sequence"
        self._join_script = redis.register_script(_JOIN)
        self._score_script = redis.register_script(_NEXT_SCORE)
        self._cancel_script = redis.register_script(_CANCEL)

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
        `maxmemory`, beside the room every accepted job holds for its result (see core.board.room)."""
        await self._room.check(extra_bytes)
        store = self.store
        if isinstance(store, RedisArtifactStore) and store.budget_bytes is not None:
            # What the budget cannot evict: pinned inputs and stems, and the stems to come.
            held = await store.pinned_bytes() + await self._room.reserved_bytes()
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
        if await self._arq.waiting_or_running() >= self.settings.max_queue:
            raise QueueFull("The queue is full right now. Please try again in a few minutes.")
        await self._reserve(job_id, expected_bytes)
        if audio_s is not None:
            await self._workers.expect_audio(job_id, audio_s, self.settings.result_ttl_s)
        # Until the job ends its input is not evicted, however full the artifact budget gets.
        await self.store.pin(request.input.artifact_key, job_id, self.settings.result_ttl_s)
        queued = await self._arq.enqueue(
            job_id, request.model_dump(mode="json"), self.settings.result_ttl_s, await self._next_score()
        )
        await self._add_waiter(job_id, request.requester)
        if not queued:  # someone else wants this too (and a cancel of theirs no longer stands)
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
        reserved = await self._room.reserve(job_id, expected_bytes)
        try:
            await self.check_room()
        except BaseException:
            if reserved:
                await self._room.release(job_id)
            raise

    async def _next_score(self) -> datetime:
        """The queue score of a job submitted now: arq's own (the millisecond) ties for jobs
        submitted in the same one, which arq then orders by id, so a later job could go first;
        this one is that millisecond or, on a tie, one past the last score handed out."""
        score = await self._score_script(keys=[self._sequence], args=[int(time.time() * 1000)])
        return datetime.fromtimestamp(int(score) / 1000, UTC)

    async def _reusable_result(self, job_id: str) -> JobResult | None:
        """A stored result that can answer a new request, or None after clearing a stale one.

        A refusal of the input stands as long as the result; a bug met by it only for
        `internal_error_ttl_s`, so a fixed worker gets to try it again the same day."""
        outcome = await self._arq.outcome(job_id)
        if outcome is None:
            return None
        result = _result_of(job_id, outcome)
        error = result.error
        reusable = (
            result.status == "done"
            and await self.store.exists(*(s.artifact_key for s in result.stems)) == len(result.stems)
        ) or (result.status == "failed" and error is not None and not error.to_exception().retryable)
        if error is not None and error.code == InternalError.code:
            age_s = (datetime.now(UTC) - outcome.finished_at).total_seconds()
            reusable = age_s < self.settings.internal_error_ttl_s
        if reusable:
            return result
        await self._arq.forget_outcome(job_id)
        await self._redis.delete(self._progress + job_id, self._cancel + job_id)
        return None

    async def _add_waiter(self, job_id: str, requester: Requester) -> None:
        """`requester` waits for the job now: a cancel of the last one before it no longer stands."""
        keys = [self._waiters + job_id, self._cancel + job_id]
        await self._join_script(keys=keys, args=[requester.key, self.settings.result_ttl_s])

    @staticmethod
    def delivery_holder(job_id: str) -> str:
        """Who pins a finished job's stems (see worker.tasks) until its chats have them."""
        return f"deliver:{job_id}"

    async def delivered(self, job_id: str, requester: Requester) -> None:
        """`requester` has its stems (or its answer): when nobody else waits, unpin them, so
        the budget may evict them before their delivery grace (`result_pin_s`) ends."""
        key = self._waiters + job_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(key, requester.key)
            pipe.scard(key)
            _, left = await pipe.execute()
        if not left:
            await self.store.release(self.delivery_holder(job_id))

    async def set_progress(self, progress: Progress) -> None:
        await self._redis.set(
            self._progress + progress.job_id, progress.model_dump_json(), ex=self.settings.result_ttl_s
        )

    async def progress(self, job_id: str) -> Progress | None:
        raw = await self._redis.get(self._progress + job_id)
        if raw is None:
            return None
        progress = Progress.model_validate_json(raw)
        if progress.stage == Stage.queued:
            place = await self._workers.place(job_id)
            progress.queue_position = place.position
            progress.workers = place.slots
            progress.eta_s = place.eta_s() if place.slots else None
        return progress

    async def result(self, job_id: str) -> JobResult | None:
        outcome = await self._arq.outcome(job_id)
        return None if outcome is None else _result_of(job_id, outcome)

    async def times(self, job_id: str) -> JobTimes | None:
        """When a finished job was queued, started and finished (None: not finished)."""
        outcome = await self._arq.outcome(job_id)
        if outcome is None:
            return None
        return JobTimes(
            outcome.enqueued_at.timestamp(), outcome.started_at.timestamp(), outcome.finished_at.timestamp()
        )

    async def queued_request(self, job_id: str) -> SeparationRequest | None:
        """The request of a job still in the queue."""
        payload = await self._arq.payload(job_id)
        return None if payload is None else SeparationRequest.model_validate(payload)

    async def state(self, job_id: str) -> JobState:
        return await self._arq.state(job_id)

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
            if progress is None and await self.state(job_id) == JobState.unknown:
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
        keys = [self._waiters + job_id, self._cancel + job_id, RESULT_PREFIX + job_id]
        who = "" if requester is None else requester.key
        return bool(await self._cancel_script(keys=keys, args=[who, self.settings.result_ttl_s]))

    async def fetch(self, artifact: StemArtifact) -> bytes:
        return await self.store.get(artifact.artifact_key)

    # --- the worker's side of a job -----------------------------------------------------
    async def stop_asked(self, job_id: str) -> bool:
        """Whether nobody waits for the job any more: its worker should stop it."""
        return bool(await self._redis.exists(self._cancel + job_id))

    async def keep_claim(self, job_id: str) -> None:
        """The job's worker is alive: its claim lasts `in_progress_ttl_s` more."""
        await self._arq.keep_claim(job_id, self.settings.in_progress_ttl_s)

    async def results_stored(self, job_id: str) -> None:
        """The job's stems are stored: they hold the room reserved for them now."""
        await self._room.release(job_id)

    async def finish(self, result: JobResult, worker: str) -> None:
        """A worker is done with a job: its final progress, its worker's measured rate, its
        outcome in the books. (arq stores `result` itself once the job function returns it.)"""
        await self.set_progress(result.final_progress())
        if result.status == "done":
            await self._workers.record_rate(worker, result.timings["total"], result.audio_seconds)
        await self._events.job_ended(result)

    async def started(self, job_id: str, score: int) -> None:
        """A worker took the job (with its queue score)."""
        await self._workers.job_started(job_id, score)

    async def ended(self, job_id: str) -> None:
        """A worker let go of the job; once it has a result, its input may be evicted again."""
        finished = await self._arq.has_outcome(job_id)
        await self._workers.job_left(job_id, finished)
        if finished:
            await self._room.release(job_id)
            await self.store.release(job_id)
