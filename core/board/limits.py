"""Who may use the bot and how much: bans, rate limits, and each user's audio minutes today.

Users are named by their key, `platform:user_id`. Admins come from `STEMBOT_ADMINS`; bans
live in Redis so every bot process shares them. Rate limits use the `limits` library on
the same Redis (fixed windows, per user and per chat).
"""

from __future__ import annotations

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.asyncio import Redis

from core.board.events import DAY_S, today
from core.errors import Banned, RateLimited
from core.settings import Settings


class Gate:
    """The checks before a request is accepted: banned? too fast (user, then chat)?"""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self.settings = settings
        self._bans = f"{settings.key_prefix}bans"
        url = settings.redis_url.replace("redis://", "async+redis://", 1)
        self._limiter = FixedWindowRateLimiter(
            RedisStorage(url, implementation="redispy", key_prefix=settings.key_prefix + "rate")
        )
        self._user_rate = parse(settings.user_rate)
        self._chat_rate = parse(settings.chat_rate)
        self._render_rate = parse(settings.render_rate)

    def is_admin(self, user_key: str) -> bool:
        return user_key in self.settings.admin_keys

    async def is_banned(self, user_key: str) -> bool:
        return bool(await self._redis.sismember(self._bans, user_key))  # type: ignore[misc]

    async def check(self, user_key: str, chat_key: str) -> None:
        """Raise the StembotError a user should see, or return when the request may go ahead."""
        await self.check_ban(user_key)
        await self.check_rate(user_key, chat_key)

    async def check_ban(self, user_key: str) -> None:
        if await self.is_banned(user_key):
            raise Banned("You can't use this bot.")

    async def check_rate(self, user_key: str, chat_key: str) -> None:
        """The per-minute limits, which protect the model: a render from cached sources skips them."""
        if self.is_admin(user_key):
            return
        if not await self._limiter.hit(self._user_rate, "user", user_key):
            raise RateLimited("You're sending requests too fast. Wait a minute and try again.")
        if not await self._limiter.hit(self._chat_rate, "chat", chat_key):
            raise RateLimited("This chat is sending requests too fast. Wait a minute and try again.")

    async def check_render_rate(self, user_key: str) -> None:
        """A render from cached sources (a follow-up button): no model runs, so the limits above
        do not apply (a musician stepping through tempi is not flooding), but this wider one
        does, so that a script cannot keep the encoders busy."""
        if self.is_admin(user_key):
            return
        if not await self._limiter.hit(self._render_rate, "render", user_key):
            raise RateLimited("You're asking for renders too fast. Wait a minute and try again.")

    async def ban(self, user_key: str) -> bool:
        await self._redis.sadd(self._bans, user_key)  # type: ignore[misc]
        return True

    async def unban(self, user_key: str) -> bool:
        return bool(await self._redis.srem(self._bans, user_key))  # type: ignore[misc]


class UsageMeter:
    """Seconds of audio each user sent today, one key per user per UTC day that expires by itself."""

    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, user_key: str) -> str:
        return f"{self._prefix}usage:{today()}:{user_key}"

    async def used_s(self, user_key: str) -> float:
        raw = await self._redis.get(self._key(user_key))
        return float(raw) if raw is not None else 0.0

    async def add(self, user_key: str, seconds: float) -> None:
        key = self._key(user_key)
        await self._redis.incrbyfloat(key, seconds)
        await self._redis.expire(key, 2 * DAY_S)
