"""Which chat waits for which job, kept in Redis so a restarted bot still delivers; what a
follow-up needs to ask for a delivered song again; the uploads a platform already holds.

A frontend records a `Delivery` when it submits a job, and its delivery loop walks the
pending ones. `claim` is a SET NX: of two bot processes (or a bot before and after a
restart) only one sends a result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from redis.asyncio import Redis

from core.domain.deliveries import Delivery
from core.domain.jobs import SeparationRequest


class DeliveryBook:
    def __init__(
        self,
        redis: Redis,
        platform: str,
        prefix: str = "stembot:",
        ttl_s: int = 86400,
        on_finish: Callable[[Delivery], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._on_finish = on_finish
        self.platform = platform
        self._pending = f"{prefix}{platform}:pending"
        self._record = f"{prefix}{platform}:delivery:"
        self._claim = f"{prefix}{platform}:delivered:"
        self.ttl_s = ttl_s

    async def add(self, delivery: Delivery) -> None:
        await self.save(delivery)
        await self._redis.sadd(self._pending, delivery.id)  # type: ignore[misc]

    async def save(self, delivery: Delivery) -> None:
        await self._redis.set(self._record + delivery.id, delivery.model_dump_json(), ex=self.ttl_s)

    async def get(self, delivery_id: str) -> Delivery | None:
        raw = await self._redis.get(self._record + delivery_id)
        return None if raw is None else Delivery.model_validate_json(raw)

    async def pending(self) -> list[Delivery]:
        ids = [i.decode() for i in await self._redis.smembers(self._pending)]  # type: ignore[misc]
        out = []
        for delivery_id in sorted(ids):
            delivery = await self.get(delivery_id)
            if delivery is None:
                await self._redis.srem(self._pending, delivery_id)  # type: ignore[misc]
            else:
                out.append(delivery)
        return out

    async def for_user(self, user_id: str) -> list[Delivery]:
        return [d for d in await self.pending() if d.user_id == user_id]

    async def claim(self, delivery: Delivery) -> bool:
        """True for exactly one caller per delivery: that caller sends the result."""
        return bool(await self._redis.set(self._claim + delivery.id, b"1", nx=True, ex=self.ttl_s))

    async def finish(self, delivery: Delivery) -> None:
        await self._redis.srem(self._pending, delivery.id)  # type: ignore[misc]
        await self._redis.delete(self._record + delivery.id)
        if self._on_finish is not None:
            await self._on_finish(delivery)


class FollowUp(BaseModel):
    """What a follow-up button (or a job stopped under a chat by another's cancel) needs to ask
    for a delivered song again."""

    request: SeparationRequest
    song: str
    duration_s: float
    note: str | None = None
    expected_bytes: int = 0


class FollowUpBook:
    """One `FollowUp` per delivery, kept as long as its song's sources."""

    def __init__(self, redis: Redis, platform: str, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._key = f"{prefix}{platform}:again:"

    async def keep(self, delivery_id: str, record: FollowUp, ttl_s: int) -> None:
        await self._redis.set(self._key + delivery_id, record.model_dump_json(), ex=ttl_s)

    async def get(self, delivery_id: str) -> FollowUp | None:
        raw = await self._redis.get(self._key + delivery_id)
        return None if raw is None else FollowUp.model_validate_json(raw)


class SentFiles:
    """What a platform gave back for uploaded files (Telegram's file ids), so the same
    stems go to the next chat without uploading them again."""

    def __init__(self, redis: Redis, platform: str, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._key = f"{prefix}{platform}:file_ids:"

    async def get(self, name: str) -> str | None:
        raw = await self._redis.get(self._key + name)
        return None if raw is None else bytes(raw).decode()

    async def keep(self, name: str, record: str, ttl_s: int) -> None:
        await self._redis.set(self._key + name, record, ex=ttl_s)
