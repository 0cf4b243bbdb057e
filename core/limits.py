"""Per-user limits: songs in progress at once and audio minutes per day.

`check_user` is the rule (pure, table-tested); `UsageMeter` keeps the daily minutes
in Redis, one key per user per UTC day that expires by itself.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from core.errors import QuotaExceeded, TooManyJobs

_DAY_S = 86400


def check_user(
    running: int, used_s: float, duration_s: float, max_jobs: int, daily_minutes: float, cancel_how: str = ""
) -> None:
    """Raise the error a user should see, or nothing when the song may start.

    `cancel_how` is how the asking frontend stops a song ("/cancel it" on Telegram): each
    names only its own commands and buttons."""
    if running >= max_jobs:
        noun = "a song" if max_jobs == 1 else f"{max_jobs} songs"
        how = f", or {cancel_how}" if cancel_how else ""
        raise TooManyJobs(f"You already have {noun} in progress. Wait for it to finish{how}.")
    if used_s + duration_s > daily_minutes * 60:
        left = max(0.0, daily_minutes * 60 - used_s) / 60
        raise QuotaExceeded(
            f"That would pass your daily limit of {daily_minutes:g} minutes of audio "
            f"({left:.1f} min left today). The limit resets at midnight UTC."
        )


class UsageMeter:
    """Seconds of audio each user sent today."""

    def __init__(self, redis: Redis, prefix: str = "stembot:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, user_key: str, now: float | None = None) -> str:
        day = int((now if now is not None else time.time()) // _DAY_S)
        return f"{self.prefix}usage:{day}:{user_key}"

    async def used_s(self, user_key: str) -> float:
        raw = await self.redis.get(self._key(user_key))
        return float(raw) if raw is not None else 0.0

    async def add(self, user_key: str, seconds: float) -> None:
        key = self._key(user_key)
        await self.redis.incrbyfloat(key, seconds)
        await self.redis.expire(key, 2 * _DAY_S)
