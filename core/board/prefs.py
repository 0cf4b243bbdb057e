"""Per-user defaults (`/settings`): the stems and format used when a request names none."""

from __future__ import annotations

from pydantic import BaseModel
from redis.asyncio import Redis

from core.domain.formats import AudioFormatName


class UserPrefs(BaseModel):
    stems: str | None = None  # canonical stem spec
    format: AudioFormatName | None = None


class PrefsStore:
    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, user_key: str) -> str:
        return f"{self._prefix}prefs:{user_key}"

    async def get(self, user_key: str) -> UserPrefs:
        raw = await self._redis.get(self._key(user_key))
        return UserPrefs() if raw is None else UserPrefs.model_validate_json(raw)

    async def update(self, user_key: str, **changes: str | None) -> UserPrefs:
        prefs = (await self.get(user_key)).model_copy(update=changes)
        await self._redis.set(self._key(user_key), UserPrefs.model_validate(prefs.model_dump()).model_dump_json())
        return prefs
