"""The web studio's books: the songs it may open (key family `studio:song:`), and its users'
request and render limits (the `limits` library on Redis, as the bots' limits are)."""

from __future__ import annotations

import secrets

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.asyncio import Redis

from core.domain.studio import StudioSong, studio_link
from core.settings import Settings


class StudioBook:
    """The songs the studio may open, one record each, kept as long as their links work."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self.settings = settings
        self._prefix = f"{settings.key_prefix}studio:song:"

    async def keep(self, song: StudioSong) -> str:
        """Keep `song` under a new id: 16 characters, within Telegram's 64-character /start payload."""
        song_id = secrets.token_urlsafe(12)
        await self._redis.set(self._prefix + song_id, song.model_dump_json(), ex=self.settings.web_link_ttl_s)
        return song_id

    async def get(self, song_id: str) -> StudioSong | None:
        raw = await self._redis.get(self._prefix + song_id)
        return None if raw is None else StudioSong.model_validate_json(raw)

    async def open(self, song: StudioSong, webapp: bool = False) -> str | None:
        """Keep `song` and return its requester's mixer link, or None when the studio is not set up."""
        if not self.settings.studio_enabled:
            return None
        return studio_link(self.settings, await self.keep(song), song, webapp)


class StudioLimits:
    """Per user: requests a minute (`STEMBOT_WEB_RATE`, polls included) and new renders a
    minute (`STEMBOT_WEB_RENDER_RATE`: each is worker time)."""

    def __init__(self, settings: Settings) -> None:
        url = settings.redis_url.replace("redis://", "async+redis://", 1)
        self._limiter = FixedWindowRateLimiter(
            RedisStorage(url, implementation="redispy", key_prefix=settings.key_prefix + "webrate")
        )
        self._requests = parse(settings.web_rate)
        self._renders = parse(settings.web_render_rate)

    async def request(self, user_key: str) -> bool:
        """Count a request; False once past the limit."""
        return bool(await self._limiter.hit(self._requests, "studio", user_key))

    async def render(self, user_key: str) -> bool:
        """Count a new render; False once past the limit."""
        return bool(await self._limiter.hit(self._renders, "studio-render", user_key))
