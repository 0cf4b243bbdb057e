"""Which chat waits for which job, kept in Redis so a restarted bot still delivers.

A frontend records a `Delivery` when it submits a job, and its delivery loop walks the
pending ones. `claim` is a SET NX: of two bot processes (or a bot before and after a
restart) only one sends a result. A platform that gives sent files ids of its own
(Telegram's file_id) has them kept per job and song name (`keep_sent`), so the same
result asked for again is sent by those ids, without uploading the bytes again.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from core.jobs import Requester


class Delivery(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    platform: str
    job_id: str
    chat_id: str
    user_id: str
    status_message_id: str | None = None
    song: str = "song"
    format: str = "mp3"
    created_at: float = Field(default_factory=time.time)
    last_status: str = ""
    last_edit_at: float = 0.0
    upload_limit: int | None = None  # bytes per upload on this chat's platform
    note: str | None = None  # told to the user with the result (e.g. a format fallback)
    extra: dict[str, str] = Field(default_factory=dict)  # platform-specific reply details
    # This chat's requester withdrew: it is told "cancelled" whatever the shared job does.
    cancelled: bool = False
    # What acceptance assumed, settled against the decoded length on delivery (core.desk):
    charged_s: float = 0.0  # seconds counted against the user's daily limit
    longest_s: float | None = None  # the longest song this request may be (None: the bot's limit)
    tempo: int = 100  # the files' tempo, to tell the song's seconds from theirs
    artist: str | None = None  # the requester's artist for the song, written into the delivered files' tags

    @property
    def requester(self) -> Requester:
        """The identity this chat submitted with; cancel must present the same one."""
        return Requester(
            platform=self.platform,
            chat_id=self.chat_id,
            user_id=self.user_id,  # type: ignore[arg-type]
            message_id=self.status_message_id,
        )


class DeliveryBook:
    def __init__(
        self,
        redis: Redis,
        platform: str,
        prefix: str = "stembot:",
        ttl_s: int = 86400,
        on_finish: Callable[[Delivery], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self._on_finish = on_finish
        self.platform = platform
        self._pending = f"{prefix}{platform}:pending"
        self._record = f"{prefix}{platform}:delivery:"
        self._claim = f"{prefix}{platform}:delivered:"
        self._sent = f"{prefix}{platform}:file_ids:"
        self.ttl_s = ttl_s

    async def add(self, delivery: Delivery) -> None:
        await self.save(delivery)
        await self.redis.sadd(self._pending, delivery.id)  # type: ignore[misc]

    async def save(self, delivery: Delivery) -> None:
        await self.redis.set(self._record + delivery.id, delivery.model_dump_json(), ex=self.ttl_s)

    async def get(self, delivery_id: str) -> Delivery | None:
        raw = await self.redis.get(self._record + delivery_id)
        return None if raw is None else Delivery.model_validate_json(raw)

    async def pending(self) -> list[Delivery]:
        ids = [i.decode() for i in await self.redis.smembers(self._pending)]  # type: ignore[misc]
        out = []
        for delivery_id in sorted(ids):
            delivery = await self.get(delivery_id)
            if delivery is None:
                await self.redis.srem(self._pending, delivery_id)  # type: ignore[misc]
            else:
                out.append(delivery)
        return out

    async def for_user(self, user_id: str) -> list[Delivery]:
        return [d for d in await self.pending() if d.user_id == user_id]

    async def claim(self, delivery: Delivery) -> bool:
        """True for exactly one caller per delivery: that caller sends the result."""
        return bool(await self.redis.set(self._claim + delivery.id, b"1", nx=True, ex=self.ttl_s))

    async def finish(self, delivery: Delivery) -> None:
        await self.redis.srem(self._pending, delivery.id)  # type: ignore[misc]
        await self.redis.delete(self._record + delivery.id)
        if self._on_finish is not None:
            await self._on_finish(delivery)

    def _sent_key(self, job_id: str, song: str) -> str:
        # Sent files are titled and named from their requester's song name: those of the same
        # name are reused, never another user's.
        return f"{self._sent}{job_id}:{hashlib.sha256(song.encode()).hexdigest()[:32]}"

    async def sent_files(self, job_id: str, song: str) -> list[tuple[str, str, str]] | None:
        """(file name, platform id, title) of each file of job `job_id` sent before as `song`."""
        raw = await self.redis.get(self._sent_key(job_id, song))
        return None if raw is None else [(name, ref, title) for name, ref, title in json.loads(raw)]

    async def keep_sent(self, job_id: str, song: str, files: list[tuple[str, str, str]]) -> None:
        await self.redis.set(self._sent_key(job_id, song), json.dumps(files), ex=self.ttl_s)
