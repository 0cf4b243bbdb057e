"""Byte storage for inputs and results that every host of a deployment can reach.

Redis with a TTL is the default; anything that implements `ArtifactStore`
(an S3-compatible bucket, say) can replace it.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis


class ArtifactMissing(KeyError):
    """The artifact expired or never existed."""


class ArtifactStore(Protocol):
    async def put(self, key: str, data: bytes, ttl_s: int) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def exists(self, *keys: str) -> int: ...

    async def touch(self, key: str, ttl_s: int) -> bool: ...

    async def delete(self, *keys: str) -> None: ...


class RedisArtifactStore:
    """Artifacts as plain Redis strings under `<prefix>artifact:<key>`, each with its own TTL."""

    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._prefix = prefix + "artifact:"

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def put(self, key: str, data: bytes, ttl_s: int) -> None:
        await self._redis.set(self._k(key), data, ex=ttl_s)

    async def get(self, key: str) -> bytes:
        data = await self._redis.get(self._k(key))
        if data is None:
            raise ArtifactMissing(key)
        return bytes(data)

    async def exists(self, *keys: str) -> int:
        return int(await self._redis.exists(*(self._k(k) for k in keys))) if keys else 0

    async def touch(self, key: str, ttl_s: int) -> bool:
        return bool(await self._redis.expire(self._k(key), ttl_s))

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._redis.delete(*(self._k(k) for k in keys))
