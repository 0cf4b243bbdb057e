"""Songs a bot process is still getting (a chat file, a link), before they become jobs.

A frontend records a `Fetch` before it downloads anything and removes it when the song
is queued or refused. The records serve two rules:

- the one-song-in-progress limit counts them with the user's jobs, so a second link sent
  while the first is still downloading is refused at once, not after its own download;
- a bot killed mid-download leaves its records behind; any live bot process of the same
  platform (the restarted one, or a sibling) finds them by their owner's lapsed
  heartbeat and answers each once, so no "Getting the file…" stands forever.

One Redis hash per platform holds them; each record carries its own deadline, and the
hash expires by itself when no bot writes to it any more.
"""

from __future__ import annotations

import math
import time
import uuid

from pydantic import BaseModel, Field
from redis.asyncio import Redis


class Fetch(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    owner: str  # the bot process that fetches
    user_id: str
    chat_id: str
    status_message_id: str | None = None  # the "Getting the file…" message to edit, if any
    reply_to_message_id: str | None = None  # else the user's message to answer
    counted: bool = True  # False: a quick check before a choice is offered, not a request
    started_at: float = Field(default_factory=time.time)
    expires_at: float


class FetchBook:
    def __init__(self, redis: Redis, platform: str, prefix: str, *, ttl_s: float, alive_s: float) -> None:
        self._redis = redis
        self.owner = uuid.uuid4().hex  # this process; a restarted bot is another owner
        self.ttl_s = ttl_s  # longer than any fetch may take: past it a record no longer counts
        self.alive_s = alive_s  # a bot that has not proved it is alive for this long is taken for dead
        self._key = f"{prefix}{platform}:fetching"
        self._alive = f"{prefix}{platform}:bot-alive:"

    async def heartbeat(self) -> None:
        await self._redis.set(self._alive + self.owner, b"1", px=math.ceil(self.alive_s * 1000))

    async def begin(
        self,
        user_id: str,
        chat_id: str,
        status_message_id: str | None = None,
        reply_to_message_id: str | None = None,
        counted: bool = True,
    ) -> Fetch:
        fetch = Fetch(
            counted=counted,
            owner=self.owner,
            user_id=user_id,
            chat_id=chat_id,
            status_message_id=status_message_id,
            reply_to_message_id=reply_to_message_id,
            expires_at=time.time() + self.ttl_s,
        )
        await self.heartbeat()  # a record of a process nobody knows alive would be swept at once
        await self._redis.hset(self._key, fetch.id, fetch.model_dump_json())  # type: ignore[misc]
        await self._redis.expire(self._key, math.ceil(self.ttl_s + self.alive_s))
        return fetch

    async def end(self, fetch: Fetch) -> None:
        await self._redis.hdel(self._key, fetch.id)  # type: ignore[misc]

    async def _all(self) -> list[Fetch]:
        raw = await self._redis.hvals(self._key)  # type: ignore[misc]
        return [Fetch.model_validate_json(r) for r in raw]

    async def others(self, fetch: Fetch) -> int:
        """How many songs `fetch`'s user began getting before it, for a request. Only earlier
        ones count: of two sent at once, the first goes ahead and the second is refused,
        rather than each refusing for the other."""
        now = time.time()
        mine = [f for f in await self._all() if f.user_id == fetch.user_id and f.counted and f.expires_at > now]
        return sum(1 for f in mine if (f.started_at, f.id) < (fetch.started_at, fetch.id))

    async def orphans(self) -> list[Fetch]:
        """Records of bot processes that died mid-fetch, each returned to exactly one caller."""
        found = []
        alive: dict[str, bool] = {self.owner: True}
        for fetch in await self._all():
            if fetch.owner not in alive:
                alive[fetch.owner] = bool(await self._redis.exists(self._alive + fetch.owner))
            if alive[fetch.owner]:
                continue
            if await self._redis.hdel(self._key, fetch.id):  # type: ignore[misc]
                found.append(fetch)  # of two live bots sweeping, only one removed it
        return found
