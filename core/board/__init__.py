"""The job board: the only code that touches Redis or arq.

It may import redis, arq, the `limits` library's Redis storage, core.domain, core.media
(the S3 byte store that may replace its own), core.settings and core.metrics; never the
use cases above it (core.desk, core.cli), nor bots or worker.
Each module owns one key family and offers it as domain verbs with typed values in and
out: jobs (submit, progress, cancel, finish), workers (registry, ETAs), room
(reservations), artifacts (the Redis store and its one budget), sources (the cache's books
and claims), deliveries (who waits for what, follow-ups, sent files), fetches, limits
(bans, rates, daily minutes), prefs, guilds, studio (the songs the web studio may open, and
its users' limits), events (one set of books for /stats and Prometheus), and arqueue (arq
itself). `Board` builds them all on one connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis
from arq.connections import ArqRedis
from arq.worker import Worker
from redis.exceptions import RedisError

from core.board.arqueue import ArqJobs, WorkerHooks, build_worker, connect
from core.board.artifacts import artifact_store_for
from core.board.deliveries import DeliveryBook, FollowUpBook, SentFiles
from core.board.events import Day, Events
from core.board.fetches import FetchBook
from core.board.guilds import Config, GuildBook
from core.board.jobs import JobQueue
from core.board.limits import Gate, UsageMeter
from core.board.prefs import PrefsStore
from core.board.room import Room
from core.board.sources import SourcesCache
from core.board.studio import StudioBook, StudioLimits
from core.board.workers import WorkerRegistry, running_key
from core.domain.deliveries import Delivery
from core.media.artifacts import ArtifactStore
from core.settings import Settings

# The errors of the board's services themselves (Redis down, full, timing out), for code
# that must tell a failing host from a failing song without importing redis.
SERVICE_ERRORS: tuple[type[BaseException], ...] = (RedisError,)


@dataclass(frozen=True)
class QueueStats:
    """The queue and today's numbers, as `/stats` shows them."""

    waiting: int
    running: int
    workers: int
    today: Day


@dataclass(frozen=True)
class Memory:
    used: int
    peak: int
    limit: int  # maxmemory; 0 = none


class Board:
    """Every book of stembot's shared state, on one Redis connection (an arq pool)."""

    def __init__(self, redis: ArqRedis, settings: Settings, store: ArtifactStore | None = None) -> None:
        self.settings = settings
        self._redis = redis
        prefix = settings.key_prefix
        self._arq = ArqJobs(redis, settings.queue_name)
        self.store = store or artifact_store_for(settings, redis)
        self.events = Events(redis, prefix)
        self.workers = WorkerRegistry(redis, self._arq, prefix)
        self.room = Room(redis, settings)
        self.jobs = JobQueue(redis, settings, self._arq, self.workers, self.room, self.store, self.events)
        self.sources = SourcesCache(self.store, redis, settings)
        self.gate = Gate(redis, settings)
        self.usage = UsageMeter(redis, prefix)
        self.prefs = PrefsStore(redis, prefix)
        self.studio = StudioBook(redis, settings)
        self.studio_limits = StudioLimits(settings)

    @classmethod
    async def connect(cls, settings: Settings) -> Board:
        return cls(await connect(settings), settings)

    async def close(self) -> None:
        await self._redis.aclose()

    def deliveries(self, platform: str, on_finish: Callable[[Delivery], Awaitable[None]] | None = None) -> DeliveryBook:
        return DeliveryBook(self._redis, platform, self.settings.key_prefix, self.settings.result_ttl_s, on_finish)

    def follow_ups(self, platform: str) -> FollowUpBook:
        return FollowUpBook(self._redis, platform, self.settings.key_prefix)

    def sent_files(self, platform: str) -> SentFiles:
        return SentFiles(self._redis, platform, self.settings.key_prefix)

    def fetches(self, platform: str, ttl_s: float) -> FetchBook:
        return FetchBook(
            self._redis, platform, self.settings.key_prefix, ttl_s=ttl_s, alive_s=self.settings.bot_alive_s
        )

    def guilds(self, model: type[Config], platform: str) -> GuildBook[Config]:
        return GuildBook(self._redis, model, platform, self.settings.key_prefix)

    async def in_queue(self) -> int:
        """Jobs waiting or running."""
        return await self._arq.waiting_or_running()

    async def stats(self) -> QueueStats:
        capacity = await self.workers.capacity()
        waiting = max(0, await self._arq.waiting_or_running() - capacity.running)
        return QueueStats(waiting, capacity.running, capacity.workers, await self.events.today())

    async def memory(self) -> Memory:
        info = await self._redis.info("memory")
        return Memory(int(info["used_memory"]), int(info["used_memory_peak"]), int(info.get("maxmemory", 0)))


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers at `url` now (within a second)."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def worker_for(
    settings: Settings, separate: Callable[..., Awaitable[Any]], hooks: WorkerHooks, **overrides: Any
) -> Worker:
    """The arq worker that runs `separate` for this deployment (overrides go straight to arq)."""
    return build_worker(settings, separate, hooks, running_key(settings.key_prefix), **overrides)
