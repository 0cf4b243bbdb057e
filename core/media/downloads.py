"""How many songs a bot downloads at once: per user and in all.

A song is held whole in memory from its download until it is stored (the desk probes
and stores bytes), so a bot's memory grows with the songs it is fetching at once. A
frontend takes a slot around the download and the acceptance of one song: one user's
second download at once is refused straight away (one clear message, nothing fetched);
past the total, downloads wait their turn, which their own deadline bounds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from core.domain.errors import TooManyJobs
from core.settings import Settings

BUSY = "You already have a song downloading; send the next one when it has arrived."


class DownloadSlots:
    def __init__(self, total: int, per_user: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_user = per_user
        self._users: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadSlots:
        return cls(settings.max_downloads, settings.max_downloads_per_user)

    @asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        """Hold one of `user`'s slots and one of all; TooManyJobs when the user has none left."""
        if self._users[user] >= self._per_user:
            raise TooManyJobs(BUSY)
        self._users[user] += 1  # counted before waiting, so a second request cannot queue behind the first
        try:
            async with self._total:
                yield
        finally:
            self._users[user] -= 1
            if not self._users[user]:
                del self._users[user]
