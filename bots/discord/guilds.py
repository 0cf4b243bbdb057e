"""Per-server settings chosen by its admins with `/stembot config`, kept in Redis."""

from __future__ import annotations

from pydantic import BaseModel, Field
from redis.asyncio import Redis


class GuildConfig(BaseModel):
    channels: list[int] = Field(default_factory=list)  # empty: every channel
    format: str | None = None
    max_minutes: float | None = None

    def allows(self, channel_id: int | None) -> bool:
        return not self.channels or channel_id in self.channels

    def describe(self) -> str:
        where = ", ".join(f"<#{c}>" for c in self.channels) or "every channel"
        longest = f"{self.max_minutes:g} min" if self.max_minutes else "the bot's limit"
        return f"Channels: {where}\nDefault format: {self.format or 'the bot default'}\nLongest song: {longest}"


class GuildConfigStore:
    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, guild_id: int) -> str:
        return f"{self.prefix}discord:guild:{guild_id}"

    async def get(self, guild_id: int | None) -> GuildConfig:
        if guild_id is None:
            return GuildConfig()
        raw = await self.redis.get(self._key(guild_id))
        return GuildConfig() if raw is None else GuildConfig.model_validate_json(raw)

    async def save(self, guild_id: int, config: GuildConfig) -> None:
        await self.redis.set(self._key(guild_id), config.model_dump_json())
