"""The worker registry: which workers live, with how many slots and at what speed, which
jobs they run, what models they can load; and from that, where a job stands and when it
may start (queue position and ETA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis

from core.board.arqueue import IN_PROGRESS_PREFIX, ArqJobs

# Where a job stands (KEYS: queue, running, live workers, the job's in-progress key, cycle
# seconds, job audio, worker rates; ARGV: job id, now). Returns its rank, how many of those
# ahead run, whether it runs, the live slots, the running count, the average slot time per
# job; the audio seconds of the waiting jobs ahead and how many of them have none recorded;
# the audio seconds of the running jobs; and the live workers' throughput (audio seconds a
# second, all slots together, "0" when none has measured its rate yet). Reals go back as
# strings: Redis would truncate them.
_PLACE = """
local rank, ahead, ahead_audio, unknown = -1, 0, 0, 0
local running_ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local is_running = {}
for _, id in ipairs(running_ids) do is_running[id] = true end
-- the audio of `ids`, in HMGETs of at most 1000 (Lua's unpack has a limit)
local function audio_of(ids)
  local out = {}
  for i = 1, #ids, 1000 do
    local values = redis.call('HMGET', KEYS[6], unpack(ids, i, math.min(i + 999, #ids)))
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
  local rate = tonumber(name and redis.call('HGET', KEYS[7], name) or '0') or 0
  if rate > 0 then
    rated = rated + n
    throughput = throughput + n / rate
  end
end
-- slots without a measured rate yet are counted at the others' mean rate
if rated > 0 then throughput = throughput * slots / rated end
local avg = redis.call('GET', KEYS[5]) or false
return {rank, ahead, redis.call('EXISTS', KEYS[4]), slots, redis.call('ZCARD', KEYS[2]), avg,
        tostring(ahead_audio), unknown, tostring(running_audio), tostring(throughput)}
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


def moving_average(old: float | None, sample: float, weight: float) -> float:
    """An exponential moving average: `sample` counts for `weight`, the past for the rest."""
    return sample if old is None else (1 - weight) * old + weight * sample


def running_key(prefix: str) -> str:
    """Jobs a worker is running now, scored by their place in the queue."""
    return f"{prefix}running"


class Capacity(NamedTuple):
    slots: int  # job slots of the live workers
    running: int  # jobs running now
    workers: int  # live worker processes


class WorkerRegistry:
    def __init__(self, redis: Redis, jobs: ArqJobs, prefix: str) -> None:
        self._redis = redis
        self._jobs = jobs
        self._running = running_key(prefix)
        # Moving average of how long a worker slot takes per job, dispatch and all.
        self._cycle = f"{prefix}stats:cycle_seconds"
        # Seconds of audio each queued or running job will separate (0: a render from the cache).
        self._audio = f"{prefix}job_audio"
        # Each worker's seconds of processing per second of audio, from the jobs it finished.
        self._rates = f"{prefix}stats:worker_rates"
        # Model names the live workers can load, scored by when that lapses.
        self._models = f"{prefix}models"
        # `host:pid:slots` of each live worker, scored by when its presence lapses.
        self._live = f"{prefix}live_workers"
        self._place_script = redis.register_script(_PLACE)

    # --- what a worker says ------------------------------------------------------------
    async def announce(self, name: str, slots: int, models: list[str], ttl_s: float) -> None:
        """`name` is alive with `slots` job slots and can load `models` for the next `ttl_s` s;
        workers that did not say so in time no longer count."""
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._live, {f"{name}:{slots}": now + ttl_s})
            pipe.zremrangebyscore(self._live, "-inf", now)
            await pipe.execute()
        await self.announce_models(models, ttl_s)
        await self.prune_running()

    async def announce_models(self, names: list[str], ttl_s: float) -> None:
        """A worker can load `names` for the next `ttl_s` seconds (the bots offer only those)."""
        if names:
            await self._redis.zadd(self._models, dict.fromkeys(names, time.time() + ttl_s))

    async def withdraw(self, name: str, slots: int) -> None:
        await self._redis.zrem(self._live, f"{name}:{slots}")
        await self._redis.hdel(self._rates, name)  # type: ignore[misc]

    async def available_models(self) -> set[str] | None:
        """What the live workers can load; with none live, what the last ones could; None
        when no worker ever said (then nothing is known to be missing)."""
        live = await self._redis.zrangebyscore(self._models, time.time(), "+inf")
        known = live or await self._redis.zrange(self._models, 0, -1)
        return {m.decode() for m in known} if known else None

    # --- the jobs they run -------------------------------------------------------------
    async def expect_audio(self, job_id: str, audio_s: float, ttl_s: int) -> None:
        """A queued job will separate `audio_s` seconds of audio (ETAs count jobs by it)."""
        await self._redis.hset(self._audio, job_id, f"{max(0.0, audio_s):.3f}")  # type: ignore[misc]
        await self._redis.expire(self._audio, ttl_s)

    async def job_started(self, job_id: str, score: int) -> None:
        """A worker took the job (with the job's queue score)."""
        await self._redis.zadd(self._running, {job_id: score})

    async def job_left(self, job_id: str, finished: bool) -> None:
        """A worker let go of the job; `finished`: it has a result (else it runs again)."""
        await self._redis.zrem(self._running, job_id)
        if finished:
            await self._redis.hdel(self._audio, job_id)  # type: ignore[misc]

    async def running_ids(self) -> list[str]:
        return [m.decode() for m in await self._redis.zrange(self._running, 0, -1)]

    async def prune_running(self) -> None:
        """Forget jobs marked running whose worker died without saying so (arq's claim lapsed)."""
        members = await self.running_ids()
        claimed = await self._jobs.still_claimed(members)
        stale = [job_id for job_id, here in zip(members, claimed, strict=True) if not here]
        if stale:
            await self._redis.zrem(self._running, *stale)

    async def record_cycle(self, seconds: float) -> None:
        """Fold one job's slot time (from its enqueue, or the slot freeing, to its end) into the ETA's average.

        Unlike the job's own time it holds what the queue adds: polling, claiming, storing
        results, and a host too busy to run the worker at once.
        """
        old = await self._redis.get(self._cycle)
        avg = moving_average(None if old is None else float(old), seconds, 0.2)
        await self._redis.set(self._cycle, f"{avg:.3f}")

    async def record_rate(self, worker: str, seconds: float, audio_s: float) -> None:
        """Fold a finished job's seconds of processing per second of audio into `worker`'s rate."""
        if audio_s <= 0 or not worker:
            return
        old = await self._redis.hget(self._rates, worker)  # type: ignore[misc]
        rate = moving_average(None if old is None else float(old), seconds / audio_s, 0.3)
        await self._redis.hset(self._rates, worker, f"{rate:.5f}")  # type: ignore[misc]

    async def rates(self) -> dict[str, float]:
        """Each worker's seconds of processing per second of audio."""
        raw = await self._redis.hgetall(self._rates)  # type: ignore[misc]
        return {k.decode(): float(v) for k, v in raw.items()}

    async def expected_audio(self, job_id: str) -> float | None:
        raw = await self._redis.hget(self._audio, job_id)  # type: ignore[misc]
        return None if raw is None else float(raw)

    # --- where a job stands ------------------------------------------------------------
    async def place(self, job_id: str) -> Place:
        """Where a job stands and what the live workers are doing, in one round trip.

        arq keeps running jobs in the queue until they end; the workers' `running` set says
        which of those ahead are running, whatever the queue's length.
        """
        keys = [self._jobs.queue_name, self._running, self._live, IN_PROGRESS_PREFIX + job_id]
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
        ) = await self._place_script(keys=[*keys, self._cycle, self._audio, self._rates], args=[job_id, time.time()])
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

    async def position(self, job_id: str) -> int | None:
        """1 = next to start, 0 = running now, None = not in the queue."""
        return (await self.place(job_id)).position

    async def capacity(self) -> Capacity:
        place = await self.place("")
        live = await self._redis.zrangebyscore(self._live, time.time(), "+inf")
        return Capacity(place.slots, place.running, len(live))

    async def eta_s(self, position: int | None) -> float | None:
        """Rough wait before a job at `position` starts (see `estimate_wait`)."""
        place = await self.place("")
        return estimate_wait(position, place.avg_job_s, place.slots, place.running)
