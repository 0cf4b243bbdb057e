"""Room in Redis for the results of jobs already accepted.

With `noeviction` a full Redis refuses every write, a worker's result included. Each
accepted job therefore reserves an estimate of its output bytes until its worker lets
go of it; new work (and optional writes such as the sources cache) is admitted only while
Redis's memory in use plus every reservation stays under `maxmemory × redis_full_ratio`.
"""

from __future__ import annotations

import time

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from core.board.arqueue import RESULT_PREFIX
from core.domain.errors import StorageFull
from core.settings import Settings

# Sum the live reservations and drop the lapsed ones, and those of jobs that have a result
# (a worker that died never gave theirs back) (KEYS: the hash; ARGV: now, arq's result key
# prefix). A value is `<bytes>:<until>`; the hash holds one field per queued or running job.
_RESERVED = """
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local size, untl = string.match(fields[i + 1], '^(%d+):([%d.]+)$')
  local finished = redis.call('EXISTS', ARGV[2] .. fields[i]) == 1
  if size and tonumber(untl) > tonumber(ARGV[1]) and not finished then
    total = total + tonumber(size)
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return total
"""


# Redis memory a reserved byte of result takes once stored: jemalloc rounds a large string up to its size class
# (up to a quarter more: a 529 kB stem takes 640 kB), and the SET's query buffer holds the
# value once more while it is written. Reserving bare bytes let the last accepted job's
# result meet `maxmemory` (seen: 5 accepted, the fifth refused its store).
STORED_PER_BYTE = 1.3


def over(used: int, reserved: int, extra: int, limit: int, ratio: float) -> bool:
    """Whether `extra` more bytes would take Redis past its share for admitted work."""
    return bool(limit) and used + reserved + extra > ratio * limit


class Room:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._key = settings.key_prefix + "reserved"
        self._sum = redis.register_script(_RESERVED)

    async def reserve(self, job_id: str, nbytes: int) -> bool:
        """Hold `nbytes` for `job_id`'s result; False if the job held some already (a joined job)."""
        until = time.time() + self._settings.result_ttl_s
        return bool(await self._redis.hsetnx(self._key, job_id, f"{max(0, int(nbytes))}:{until:.0f}"))  # type: ignore[misc]

    async def release(self, job_id: str) -> None:
        await self._redis.hdel(self._key, job_id)  # type: ignore[misc]

    async def reserved_bytes(self) -> int:
        return int(await self._sum(keys=[self._key], args=[time.time(), RESULT_PREFIX]))

    async def _memory(self) -> tuple[int, int] | None:
        """(used, maxmemory), or None where a managed Redis hides INFO."""
        try:
            memory = await self._redis.info("memory")
        except redis_errors.ResponseError:  # its own OOM refusals still count
            return None
        return int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))

    async def check(self, extra: int = 0) -> None:
        """Raise StorageFull unless `extra` bytes fit beside every accepted job's reservation."""
        memory = await self._memory()
        if memory is None:
            return
        used, limit = memory
        reserved = int(await self.reserved_bytes() * STORED_PER_BYTE) if limit else 0
        if over(used, reserved, extra, limit, self._settings.redis_full_ratio):
            raise StorageFull(detail=f"Redis holds {used} of {limit} bytes, {reserved} reserved, {extra} more asked")

    async def fits(self, nbytes: int) -> bool:
        """Whether an optional write of `nbytes` leaves the accepted jobs their room."""
        try:
            await self.check(nbytes)
        except StorageFull:
            return False
        return True
