"""One set of books: what happened today (`/stats`) and this process's Prometheus counters
are both written by `Events.record`, from the same event, so they cannot disagree.

Today's numbers live in one Redis hash per UTC day that expires by itself; the Prometheus
counters count what this process recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import metrics
from core.domain.jobs import JobResult

DAY_S = 86400
log = logging.getLogger(__name__)


def today(now: float | None = None) -> int:
    """The number of the UTC day `now` (default: now) falls in."""
    return int((time.time() if now is None else now) // DAY_S)


class Event(StrEnum):
    request = "request"  # a song accepted from a user (`platform`)
    cache_hit = "cache_hit"  # ... answered from a stored result
    refusal = "refusal"  # a request refused before queueing (`platform`, `code`)
    job_ended = "job_ended"  # a worker finished a job (`status`; `amount`: minutes of audio)
    model_run = "model_run"  # the model separated a song (`model`)
    cached_render = "cached_render"  # a job rendered from a song's cached sources


def _day_fields(event: Event, label: str) -> list[str]:
    """The fields of today's hash an event adds to."""
    match event:
        case Event.request:
            return ["requests", f"requests_{label}"]
        case Event.cache_hit:
            return ["cache_hits"]
        case Event.refusal:
            return ["refusals", f"refusals_{label}"]
        case Event.job_ended:
            return [f"jobs_{label}"]
        case Event.model_run:
            return ["model_runs"]
        case Event.cached_render:
            return ["cached_renders"]


def _count_in_prometheus(event: Event, label: str, detail: str, minutes: float) -> None:
    match event:
        case Event.request:
            metrics.REQUESTS.labels(label).inc()
        case Event.cache_hit:
            metrics.CACHE_HITS.labels(label).inc()
        case Event.refusal:
            metrics.REFUSALS.labels(label, detail).inc()
        case Event.job_ended:
            metrics.JOBS.labels(label).inc()
            metrics.AUDIO_MINUTES.inc(minutes)
        case Event.model_run:
            metrics.MODEL_RUNS.labels(label).inc()
        case Event.cached_render:
            metrics.CACHED_RENDERS.inc()


@dataclass(frozen=True)
class Day:
    """Today's numbers, as `/stats` shows them."""

    counts: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.counts.get(name, 0.0)


class Events:
    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, day: int | None = None) -> str:
        return f"{self._prefix}stats:{today() if day is None else day}"

    async def record(self, event: Event, label: str = "", detail: str = "", audio_minutes: float = 0.0) -> None:
        """Count `event` in today's numbers, then in this process's Prometheus counters.

        `label`: the platform (request, cache hit, refusal), the job's status (job ended) or
        the model (model run); `detail`: a refusal's code. A count Redis refuses (it is down,
        or full) is logged and counted nowhere, so the two books still agree."""
        key = self._key()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for name in _day_fields(event, label):
                    pipe.hincrbyfloat(key, name, 1)
                if audio_minutes:
                    pipe.hincrbyfloat(key, "audio_minutes", audio_minutes)
                pipe.expire(key, 8 * DAY_S)
                await pipe.execute()
        except RedisError:
            log.warning("could not count %s %s", event.value, label, exc_info=True)
            return
        _count_in_prometheus(event, label, detail, audio_minutes)

    async def job_ended(self, result: JobResult) -> None:
        """A worker finished a job: its outcome counted, its times observed."""
        await self.record(Event.job_ended, result.status, audio_minutes=result.audio_seconds / 60)
        for stage in metrics.JOB_STAGES:
            if stage in result.timings:
                metrics.STAGE_SECONDS.labels(stage).observe(result.timings[stage])
        if result.audio_seconds > 0:
            metrics.SECONDS_PER_AUDIO_SECOND.observe(result.timings["total"] / result.audio_seconds)

    async def today(self) -> Day:
        raw = await self._redis.hgetall(self._key())  # type: ignore[misc]
        return Day({k.decode(): float(v) for k, v in raw.items()})
