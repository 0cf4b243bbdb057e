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
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.media.artifacts import ArtifactMissing, ArtifactStore, Blob, S3ArtifactStore, checked_key
from core.settings import Settings


def redacted(exc: RedisError, doing: str) -> RedisError:
    """The same class of error without the command's arguments, which redis-py quotes in a
    failed pipeline's message: a log or a result must never carry an artifact's bytes."""
    reason = str(exc).rpartition("caused error: ")[2][:200]
    return type(exc)(f"{doing} failed: {reason}")


def group_of(key: str) -> str:
    """The artifacts kept and evicted together, named by their common prefix: a song's
    separated sources with their manifest (`sources:<sha>:<model>[:<section>]`), a job's
    stems (`result:<job>`); any other artifact (an input) is a group of its own. A key's
    last part names a file of its group when it has an extension."""
    head, _, last = key.rpartition(":")
    return head if head and "." in last else key


# Account for one artifact just written (KEYS: index, sizes, group bytes, total; ARGV: key,
# its group, size, now, data prefix, pin prefix, budget, members prefix), then evict the
# groups used longest ago, whole, while the total is over the budget: not a group holding a
# pinned artifact, nor the one written to. Members whose data expired are dropped on the way
# without counting as evictions. The walk is bounded, so one put never stalls Redis.
_ACCOUNT_AND_EVICT = """
local key, group, size, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local data_prefix, pin_prefix, budget, members = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
if size >= 0 then
  local old = tonumber(redis.call('HGET', KEYS[2], key) or '0')
  total = total - old + size
  redis.call('HSET', KEYS[2], key, size)
  redis.call('HINCRBY', KEYS[3], group, size - old)
  redis.call('SADD', members .. group, key)
  redis.call('ZADD', KEYS[1], now, group)
end
local evicted, skip, steps = 0, 0, 0
while total > budget and steps < 2000 do
  local batch = redis.call('ZRANGE', KEYS[1], skip, skip + 99)
  if #batch == 0 then break end
  for _, g in ipairs(batch) do
    steps = steps + 1
    if total <= budget then break end
    local keys = redis.call('SMEMBERS', members .. g)
    local alive, held = false, g == group
    for _, k in ipairs(keys) do
      if redis.call('EXISTS', data_prefix .. k) == 1 then
        alive = true
        if redis.call('EXISTS', pin_prefix .. k) == 1 then held = true end
      end
    end
    if alive and held then
      skip = skip + 1
    else
      for _, k in ipairs(keys) do
        total = total - tonumber(redis.call('HGET', KEYS[2], k) or '0')
        redis.call('HDEL', KEYS[2], k)
        evicted = evicted + redis.call('DEL', data_prefix .. k)
      end
      redis.call('DEL', members .. g)
      redis.call('HDEL', KEYS[3], g)
      redis.call('ZREM', KEYS[1], g)
    end
  end
end
if total < 0 then total = 0 end
redis.call('SET', KEYS[4], total)
return evicted
"""

# Forget, of the artifacts named (KEYS: index, sizes, group bytes, total; ARGV: data prefix,
# members prefix, then each key and its group), those whose data no longer exists: a sweep.
_FORGET_GONE = """
local data_prefix, members = ARGV[1], ARGV[2]
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
for i = 3, #ARGV, 2 do
  local k, g = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', data_prefix .. k) == 0 then
    local size = tonumber(redis.call('HGET', KEYS[2], k) or '0')
    total = total - size
    redis.call('HDEL', KEYS[2], k)
    redis.call('SREM', members .. g, k)
    if redis.call('SCARD', members .. g) == 0 then
      redis.call('HDEL', KEYS[3], g)
      redis.call('ZREM', KEYS[1], g)
    else
      redis.call('HINCRBY', KEYS[3], g, -size)
    end
  end
end
if total < 0 then total = 0 end
redis.call('SET', KEYS[4], total)
"""


# Unpin every artifact a holder pinned (KEYS: the holder's set; ARGV: pin prefix, holder).
_RELEASE = """
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SREM', ARGV[1] .. k, ARGV[2])
end
redis.call('DEL', KEYS[1])
"""


# Bytes of live, pinned artifacts (KEYS: sizes; ARGV: data prefix, pin prefix): one read of
# the sizes, then a check per artifact. The index holds what fits in the budget, a few
# thousand artifacts at most.
_PINNED = """
local total = 0
local sizes = redis.call('HGETALL', KEYS[1])
for i = 1, #sizes, 2 do
  local k = sizes[i]
  if redis.call('EXISTS', ARGV[2] .. k) == 1 and redis.call('EXISTS', ARGV[1] .. k) == 1 then
    total = total + tonumber(sizes[i + 1])
  end
end
return total
"""


class ArtifactIndex:
    """The one index of every stored artifact, whatever the store: groups (`group_of`) by
    last use (a sorted set), each artifact's size and each group's (hashes), the members of
    each group (sets) and the total. The Redis store keeps its byte budget by it; the
    sources cache its cap on songs' sources, in either store."""

    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._index = prefix + "artifacts:stored"
        self._sizes = prefix + "artifacts:sizes"
        self._group_bytes = prefix + "artifacts:group_bytes"
        self._total = prefix + "artifacts:bytes"
        self._members = prefix + "artifacts:members:"
        self._account = redis.register_script(_ACCOUNT_AND_EVICT)
        self._forget_gone = redis.register_script(_FORGET_GONE)
        self._pinned = redis.register_script(_PINNED)

    @property
    def _books(self) -> list[str]:
        return [self._index, self._sizes, self._group_bytes, self._total]

    async def account(
        self,
        key: str,
        size: int,
        data_prefix: str,
        pin_prefix: str,
        budget: int | None,
        client: Any = None,
    ) -> int:
        """Book `key` (`size` < 0: nothing new) and evict down to `budget`; the evicted count.
        `client`: a pipeline to run in, so the write and its books are one transaction."""
        limit = budget if budget is not None else 2**62
        args: list[str | int | float] = [key, group_of(key) if key else "", size, time.time()]
        args += [data_prefix, pin_prefix, limit, self._members]
        if client is not None:  # queued in the pipeline; its result comes with the others'
            await self._account(keys=self._books, args=args, client=client)
            return 0
        return int(await self._account(keys=self._books, args=args))

    async def used(self, key: str) -> None:
        """`key`'s group counts as used now: it is evicted last."""
        await self._redis.zadd(self._index, {group_of(key): time.time()}, xx=True)

    async def forget(self, keys: list[str], data_prefix: str) -> None:
        """Delete artifacts (their data, where it is in Redis) and their books.

        Plain commands in one transaction, not a script: an undo runs right after a write
        Redis refused for want of memory, when loading a script may be refused too."""
        if not keys:
            return
        sizes = [int(s or 0) for s in await self._redis.hmget(self._sizes, keys)]  # type: ignore[misc]
        groups: dict[str, int] = {}
        for key, size in zip(keys, sizes, strict=True):
            groups[group_of(key)] = groups.get(group_of(key), 0) + size
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(data_prefix + k for k in keys))
            pipe.hdel(self._sizes, *keys)
            for key in keys:
                pipe.srem(self._members + group_of(key), key)
            for group, size in groups.items():
                pipe.hincrby(self._group_bytes, group, -size)
            pipe.decrby(self._total, sum(sizes))
            await pipe.execute()
        await self._drop_empty(list(groups))

    async def _drop_empty(self, groups: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.scard(self._members + group)
            counts = await pipe.execute()
        empty = [g for g, n in zip(groups, counts, strict=True) if not n]
        if empty:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._index, *empty)
                pipe.hdel(self._group_bytes, *empty)
                await pipe.execute()

    async def forget_gone(self, data_prefix: str) -> None:
        """Drop from the books the artifacts whose data expired or was deleted."""
        keys = await self.all_keys()
        if keys:
            pairs = [part for key in keys for part in (key, group_of(key))]
            await self._forget_gone(keys=self._books, args=[data_prefix, self._members, *pairs])

    async def pinned_bytes(self, data_prefix: str, pin_prefix: str) -> int:
        return int(await self._pinned(keys=[self._sizes], args=[data_prefix, pin_prefix]))

    async def groups(self, prefix: str = "", used_before: float | None = None) -> list[str]:
        """The groups whose names start with `prefix`, used longest ago first; only those last
        used before `used_before` (a `time.time()`) if given."""
        until = "+inf" if used_before is None else used_before
        groups = (raw.decode() for raw in await self._redis.zrangebyscore(self._index, "-inf", until))
        return [g for g in groups if g.startswith(prefix)]

    async def members(self, group: str) -> list[str]:
        return sorted(m.decode() for m in await self._redis.smembers(self._members + group))  # type: ignore[misc]

    async def bytes_of(self, groups: list[str]) -> int:
        if not groups:
            return 0
        sizes = await self._redis.hmget(self._group_bytes, groups)  # type: ignore[misc]
        return sum(int(s or 0) for s in sizes)

    async def total(self) -> int:
        return int(await self._redis.get(self._total) or 0)

    async def all_keys(self) -> list[str]:
        return [k.decode() for k in await self._redis.hkeys(self._sizes)]  # type: ignore[misc]


# Values past this go to Redis in pieces of this size. Python 3.11's asyncio sends a big
# write by deleting what went out from the front of one buffer, a copy of all the rest each
# time: for four kept sources of a 240 s song, 0.45 CPU-s against 0.19 in pieces (README).
_PIECE = 4 << 20


class RedisArtifactStore:
    """Artifacts as plain Redis strings under `<prefix>artifact:<key>`, each with its own TTL,
    kept within `budget_bytes` by the one `ArtifactIndex`; and per-artifact sets of pin holders.
    """

    def __init__(self, redis: Redis, prefix: str = "stembot:", budget_bytes: int | None = None) -> None:
        self._redis = redis
        self._prefix = prefix + "artifact:"
        self._pins = prefix + "artifacts:pin:"
        self._held = prefix + "artifacts:held:"
        self._staging = prefix + "artifacts:staging:"
        self.budget_bytes = budget_bytes
        self.index = ArtifactIndex(redis, prefix)
        self._release = redis.register_script(_RELEASE)

    def _k(self, key: str) -> str:
        return self._prefix + checked_key(key)

    async def _account(self, key: str, size: int, pipe: Any = None) -> int:
        return await self.index.account(key, size, self._prefix, self._pins, self.budget_bytes, pipe)

    async def put(self, key: str, data: Blob, ttl_s: int) -> None:
        try:
            if len(data) > _PIECE:
                await self._put_in_pieces(key, data, ttl_s)
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._k(key), data, ex=ttl_s)
                await self._account(key, len(data), pipe)
                await pipe.execute()
        except RedisError as exc:
            raise redacted(exc, f"storing {key} ({len(data)} bytes)") from None

    async def _put_in_pieces(self, key: str, data: Blob, ttl_s: int) -> None:
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
                await self._account(key, len(data), pipe)
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
        """Extend `key`'s life; its group counts as used now, so it is evicted last."""
        if not await self._redis.expire(self._k(key), ttl_s):
            return False
        await self.index.used(key)
        return True

    async def delete(self, *keys: str) -> None:
        await self.index.forget([checked_key(k) for k in keys], self._prefix)

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
        return await self.index.pinned_bytes(self._prefix, self._pins)

    async def sweep(self) -> int:
        """Drop index entries whose artifact expired or was deleted, and evict down to the budget.

        Returns how many live artifacts were evicted.
        """
        await self.index.forget_gone(self._prefix)
        return await self._account("", -1)

    async def stored_bytes(self) -> int:
        await self.sweep()
        return await self.index.total()


class IndexedS3Store(S3ArtifactStore):
    """The S3 store, with what it holds booked in the one `ArtifactIndex` (in Redis), so the
    sources cache's cap holds in a bucket too. A bucket has no byte budget: nothing is
    evicted but by that cap, and objects expire by the bucket's lifecycle rule."""

    # Never a Redis key: the index's scripts see no data of a bucket's objects.
    _NO_DATA = "\0s3:"

    def __init__(self, settings: Settings, redis: Redis) -> None:
        super().__init__(settings)
        self.index = ArtifactIndex(redis, settings.key_prefix)

    async def put(self, key: str, data: Blob, ttl_s: int) -> None:
        await super().put(key, data, ttl_s)
        await self.index.account(checked_key(key), len(data), self._NO_DATA, self._NO_DATA, None)

    async def touch(self, key: str, ttl_s: int) -> bool:
        if not await super().touch(key, ttl_s):
            return False
        await self.index.used(key)
        return True

    async def delete(self, *keys: str) -> None:
        await super().delete(*keys)
        await self.index.forget(list(keys), self._NO_DATA)


def artifact_store_for(settings: Settings, redis: Redis) -> ArtifactStore:
    """The store the settings choose: Redis (default) or an S3-compatible bucket."""
    if settings.artifact_store == "s3":
        return IndexedS3Store(settings, redis)
    return RedisArtifactStore(redis, settings.key_prefix, settings.artifact_budget_bytes)
