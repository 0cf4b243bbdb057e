"""Per-server settings of a chat platform (a Discord guild's `/stembot config`), one record
per server, in whatever model the frontend defines."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis

Config = TypeVar("Config", bound=BaseModel)


class GuildBook(Generic[Config]):
    def __init__(self, redis: Redis, model: type[Config], platform: str, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._model = model
        self._prefix = f"{prefix}{platform}:guild:"

    async def get(self, guild_id: int | None) -> Config:
        """The server's settings; a new model's defaults when it has none (or is no server)."""
        if guild_id is None:
            return self._model()
        raw = await self._redis.get(f"{self._prefix}{guild_id}")
        return self._model() if raw is None else self._model.model_validate_json(raw)

    async def save(self, guild_id: int, config: Config) -> None:
        await self._redis.set(f"{self._prefix}{guild_id}", config.model_dump_json())
