"""Who may use the bot, how often, and what operators see: bans, rate limits, /stats counters.

Users are named by their key, `platform:user_id`. Admins come from `STEMBOT_ADMINS`; bans
live in Redis so every bot process shares them. Rate limits use the `limits` library on
the same Redis (fixed windows, per user and per chat).
"""

from __future__ import annotations

import time

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.asyncio import Redis

from core.errors import Banned, RateLimited
from core.settings import Settings

_DAY_S = 86400


def today() -> int:
    return int(time.time() // _DAY_S)


class Gate:
    """The checks before a request is accepted: banned? too fast (user, then chat)?"""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
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
        return bool(await self.redis.sismember(self._bans, user_key))  # type: ignore[misc]

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
        await self.redis.sadd(self._bans, user_key)  # type: ignore[misc]
        return True

    async def unban(self, user_key: str) -> bool:
        return bool(await self.redis.srem(self._bans, user_key))  # type: ignore[misc]


class Counters:
    """Today's numbers for /stats: jobs by outcome, cache hits, audio minutes."""

    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, day: int | None = None) -> str:
        return f"{self.prefix}stats:{day if day is not None else today()}"

    async def add(self, name: str, amount: float = 1) -> None:
        key = self._key()
        await self.redis.hincrbyfloat(key, name, amount)  # type: ignore[misc]
        await self.redis.expire(key, 8 * _DAY_S)

    async def today(self) -> dict[str, float]:
        raw = await self.redis.hgetall(self._key())  # type: ignore[misc]
        return {k.decode(): float(v) for k, v in raw.items()}
