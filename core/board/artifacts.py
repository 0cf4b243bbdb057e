"""The artifact store in Redis, and the choice of store the settings make.

The Redis store keeps within one byte budget and one eviction index over every stored
artifact (inputs, results, cached sources): past the budget, the artifacts stored or
refreshed longest ago go first, whatever their class, except those pinned by a holder (a
queued or running job pins its input until it ends). A request whose result was evicted
is recomputed, as one whose result expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.artifacts import ArtifactMissing, ArtifactStore, S3ArtifactStore, checked_key
from core.settings import Settings


def redacted(exc: RedisError, doing: str) -> RedisError:
    """The same class of error without the command's arguments, which redis-py quotes in a
    failed pipeline's message: a log or a result must never carry an artifact's bytes."""
    reason = str(exc).rpartition("caused error: ")[2][:200]
    return type(exc)(f"{doing} failed: {reason}")


# Account for one artifact just written (KEYS: index, sizes, total; ARGV: key, size, now,
# data prefix, pin prefix, budget), then evict the oldest unpinned artifacts while the
# total is over the budget. Index entries whose data expired are dropped on the way
# without counting as evictions. The walk is bounded, so one put never stalls Redis.
_ACCOUNT_AND_EVICT = """
local key, size, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local data_prefix, pin_prefix, budget = ARGV[4], ARGV[5], tonumber(ARGV[6])
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if size >= 0 then
  total = total - tonumber(redis.call('HGET', KEYS[2], key) or '0') + size
  redis.call('HSET', KEYS[2], key, size)
  redis.call('ZADD', KEYS[1], now, key)
end
local evicted, skip, steps = 0, 0, 0
while total > budget and steps < 2000 do
  local batch = redis.call('ZRANGE', KEYS[1], skip, skip + 99)
  if #batch == 0 then break end
  for _, k in ipairs(batch) do
    steps = steps + 1
    if total <= budget then break end
    local alive = redis.call('EXISTS', data_prefix .. k) == 1
    if alive and (k == key or redis.call('EXISTS', pin_prefix .. k) == 1) then
      skip = skip + 1
    else
      total = total - tonumber(redis.call('HGET', KEYS[2], k) or '0')
      redis.call('HDEL', KEYS[2], k)
      redis.call('ZREM', KEYS[1], k)
      if alive then
        redis.call('DEL', data_prefix .. k)
        evicted = evicted + 1
      end
    end
  end
end
if total < 0 then total = 0 end
redis.call('SET', KEYS[3], total)
return evicted
"""


# Unpin every artifact a holder pinned (KEYS: the holder's set; ARGV: pin prefix, holder).
_RELEASE = """
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SREM', ARGV[1] .. k, ARGV[2])
end
redis.call('DEL', KEYS[1])
"""


# Bytes of live, pinned artifacts (KEYS: index, sizes; ARGV: data prefix, pin prefix). The
# index holds what fits in the budget, a few thousand entries at most.
_PINNED = """
local total = 0
for _, k in ipairs(redis.call('ZRANGE', KEYS[1], 0, 19999)) do
  if redis.call('EXISTS', ARGV[2] .. k) == 1 and redis.call('EXISTS', ARGV[1] .. k) == 1 then
    total = total + tonumber(redis.call('HGET', KEYS[2], k) or '0')
  end
end
return total
"""

# Values past this go to Redis in pieces of this size. Python 3.11's asyncio sends a big
# write by deleting what went out from the front of one buffer, a copy of all the rest each
# time: for four kept sources of a 240 s song, 0.45 CPU-s against 0.19 in pieces (README).
_PIECE = 4 << 20


class RedisArtifactStore:
    """Artifacts as plain Redis strings under `<prefix>artifact:<key>`, each with its own TTL.

    Beside them: an index of when each was stored (a sorted set), their sizes (a hash) and
    the total, which keep the store within `budget_bytes`; and per-artifact sets of pin
    holders.
    """

    def __init__(self, redis: Redis, prefix: str = "stembot:", budget_bytes: int | None = None) -> None:
        self._redis = redis
        self._prefix = prefix + "artifact:"
        self._index = prefix + "artifacts:stored"
        self._sizes = prefix + "artifacts:sizes"
        self._total = prefix + "artifacts:bytes"
        self._pins = prefix + "artifacts:pin:"
        self._held = prefix + "artifacts:held:"
        self._staging = prefix + "artifacts:staging:"
        self.budget_bytes = budget_bytes
        self._account = redis.register_script(_ACCOUNT_AND_EVICT)
        self._release = redis.register_script(_RELEASE)
        self._pinned = redis.register_script(_PINNED)

    def _k(self, key: str) -> str:
        return self._prefix + checked_key(key)

    def _account_args(self, key: str, size: int) -> list[str | int | float]:
        budget = self.budget_bytes if self.budget_bytes is not None else 2**62
        return [key, size, time.time(), self._prefix, self._pins, budget]

    async def put(self, key: str, data: bytes, ttl_s: int) -> None:
        try:
            if len(data) > _PIECE:
                await self._put_in_pieces(key, data, ttl_s)
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._k(key), data, ex=ttl_s)
                await self._account(
                    keys=[self._index, self._sizes, self._total], args=self._account_args(key, len(data)), client=pipe
                )
                await pipe.execute()
        except RedisError as exc:
            raise redacted(exc, f"storing {key} ({len(data)} bytes)") from None

    async def _put_in_pieces(self, key: str, data: bytes, ttl_s: int) -> None:
        """A big value written piece by piece beside its key (a name of its own, so two puts
        of one key never mix), then moved in place with its books in one transaction:
        nobody ever reads half of it."""
        staging = f"{self._staging}{checked_key(key)}:{uuid.uuid4().hex}"
        view = memoryview(data)
        try:
            # the last piece first: Redis allocates the whole string once, the others fill it
            last = (len(data) - 1) // _PIECE * _PIECE
            await self._redis.setrange(staging, last, view[last:])
            await self._redis.expire(staging, ttl_s)
            for at in range(0, last, _PIECE):
                await self._redis.setrange(staging, at, view[at : at + _PIECE])
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rename(staging, self._k(key))
                pipe.expire(self._k(key), ttl_s)
                await self._account(
                    keys=[self._index, self._sizes, self._total], args=self._account_args(key, len(data)), client=pipe
                )
                await pipe.execute()
        except BaseException:  # a full Redis, say: the pieces are not left to expire
            with contextlib.suppress(Exception):  # the first failure is the one to raise
                await asyncio.shield(self._redis.delete(staging))
            raise

    async def get(self, key: str) -> bytes:
        data = await self._redis.get(self._k(key))
        if data is None:
            raise ArtifactMissing(key)
        return bytes(data)

    async def exists(self, *keys: str) -> int:
        return int(await self._redis.exists(*(self._k(k) for k in keys))) if keys else 0

    async def touch(self, key: str, ttl_s: int) -> bool:
        """Extend `key`'s life; it counts as stored now, so it is evicted last."""
        if not await self._redis.expire(self._k(key), ttl_s):
            return False
        await self._redis.zadd(self._index, {key: time.time()}, xx=True)
        return True

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        sizes = await self._redis.hmget(self._sizes, list(keys))  # type: ignore[misc]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(self._k(k) for k in keys))
            pipe.zrem(self._index, *keys)
            pipe.hdel(self._sizes, *keys)
            pipe.decrby(self._total, sum(int(s or 0) for s in sizes))
            await pipe.execute()

    async def pin(self, key: str, holder: str, ttl_s: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._pins + key, holder)
            pipe.expire(self._pins + key, ttl_s)
            pipe.sadd(self._held + holder, key)
            pipe.expire(self._held + holder, ttl_s)
            await pipe.execute()

    async def release(self, holder: str) -> None:
        await self._release(keys=[self._held + holder], args=[self._pins, holder])

    async def pinned_bytes(self) -> int:
        """Bytes of the artifacts a holder keeps from eviction now: room the budget cannot free."""
        return int(await self._pinned(keys=[self._index, self._sizes], args=[self._prefix, self._pins]))

    async def sweep(self) -> int:
        """Drop index entries whose artifact expired or was deleted, and evict down to the budget.

        Returns how many live artifacts were evicted.
        """
        entries = [k.decode() for k in await self._redis.zrange(self._index, 0, -1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in entries:
                pipe.exists(self._k(key))
            alive = await pipe.execute()
        gone = [key for key, here in zip(entries, alive, strict=True) if not here]
        if gone:
            sizes = await self._redis.hmget(self._sizes, gone)  # type: ignore[misc]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._index, *gone)
                pipe.hdel(self._sizes, *gone)
                pipe.decrby(self._total, sum(int(s or 0) for s in sizes))
                await pipe.execute()
        evicted: int = await self._account(
            keys=[self._index, self._sizes, self._total], args=self._account_args("", -1)
        )
        return evicted

    async def stored_bytes(self) -> int:
        await self.sweep()
        return int(await self._redis.get(self._total) or 0)


def artifact_store_for(settings: Settings, redis: Redis) -> ArtifactStore:
    """The store the settings choose: Redis (default) or an S3-compatible bucket."""
    if settings.artifact_store == "s3":
        return S3ArtifactStore(settings)
    return RedisArtifactStore(redis, settings.key_prefix, settings.artifact_budget_bytes)
