"""The sources cache: songs' separated sources kept within `STEMBOT_SOURCES_MAX_MB`, and
the claims of separations under way, so the same song asked for twice at once runs the
model once. The entries' shape is core.domain.sources.

An entry (its manifest and its sources) is one group of the one artifact index
(core.board.artifacts): the cap evicts the groups of sources used longest ago, and the
Redis store's wider budget (`STEMBOT_ARTIFACT_BUDGET_MB`) evicts whole groups too, so no
second set of books can disagree with the store's. An entry whose sources expired apart
from its manifest (their TTLs are set one by one) is dropped when found, and the song is
separated again, as if it had never been cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import time
from pathlib import Path
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.board.artifacts import ArtifactIndex
from core.domain.errors import StorageFull
from core.domain.facts import SongFacts
from core.domain.sources import Manifest, SourceSet, entry_key
from core.media.artifacts import ArtifactMissing, ArtifactStore
from core.settings import Settings

Claim = Literal["ours", "held", "unkept"]
_UNKEPT = "-unkept-"  # a claim's value once its holder ended without keeping the sources
# KEYS[1] the claim; ARGV[1] the job; ARGV[2] milliseconds
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'ours'
end
return current
"""
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# ARGV[2]: '' to drop the claim, or the value that says the sources were not kept, for ARGV[3] ms
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def mapped(path: Path) -> memoryview:
    """A file's bytes as they lie in the page cache, not read into a `bytes` of their own: a
    63 MB source sent to Redis from its mapping cost 0.022 CPU-s, from a fresh copy 0.058
    (README, "Whole jobs"). The mapping goes with the last view of it."""
    with path.open("rb") as file:
        if os.fstat(file.fileno()).st_size == 0:  # (an empty file cannot be mapped)
            return memoryview(b"")
        return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))


class SourcesCache:
    def __init__(self, store: ArtifactStore, redis: Redis, settings: Settings) -> None:
        self.store = store
        self.redis = redis
        self.ttl_s = settings.sources_ttl_s
        self.max_bytes = settings.sources_max_bytes
        self._prefix = settings.key_prefix
        # sources in Redis must leave the room `redis_full_ratio` keeps for accepted jobs
        self._in_redis = settings.artifact_store == "redis"
        self._full_ratio = settings.redis_full_ratio
        self.index = ArtifactIndex(redis, settings.key_prefix)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    async def find(self, sha256: str, model: str, section: tuple[int, int | None]) -> tuple[str, Manifest] | None:
        """Cached sources that cover `section` of the song: the whole song's, or that section's own."""
        if not self.enabled:
            return None
        for key in dict.fromkeys((entry_key(sha256, model), entry_key(sha256, model, section))):
            manifest = await self._manifest(key)
            if manifest is not None:
                return key, manifest
        return None

    async def _manifest(self, key: str) -> Manifest | None:
        try:
            raw = await self.store.get(key)
        except ArtifactMissing:
            # Not dropped: the manifest is written last, so its sources may be on their way
            # (another job keeping them right now); dropping them here cost that job its entry
            # and the waiting job a second separation. Leftovers of an expired one are evict's.
            return None
        manifest = Manifest.model_validate_json(raw)
        keys = [manifest.source_key(key, name) for name in manifest.sources]
        if await self.store.exists(*keys) != len(keys):  # a source expired apart from its manifest
            await self.drop(key)
            return None
        return manifest

    async def fetch(self, key: str, manifest: Manifest, dest: Path) -> SourceSet | None:
        """The sources as files in `dest`, their lifetime renewed; None if one expired meanwhile."""
        paths = {}
        try:
            for name in manifest.sources:
                path = dest / f"{name}.{manifest.codec}"
                data = await self.store.get(manifest.source_key(key, name))
                await asyncio.to_thread(path.write_bytes, data)  # tens of MB: not in the event loop's thread
                paths[name] = path
        except ArtifactMissing:
            await self.drop(key)
            return None
        for name in manifest.sources:
            await self.store.touch(manifest.source_key(key, name), self.ttl_s)
        await self.store.touch(key, self.ttl_s)
        return SourceSet(
            paths, manifest.offset, manifest.frames, manifest.whole, manifest.title, manifest.artist,
            facts=manifest.facts, entry=key,
        )  # fmt: skip

    async def add_facts(self, key: str, facts: SongFacts) -> None:
        """Keep `facts` in an entry kept before they were detected (a no-op once it is gone)."""
        try:
            manifest = Manifest.model_validate_json(await self.store.get(key))
        except ArtifactMissing:
            return
        updated = manifest.model_copy(update={"facts": facts})
        await self.store.put(key, updated.model_dump_json().encode(), self.ttl_s)

    async def facts(self, sha256: str, model: str) -> SongFacts | None:
        """The facts kept with a song's whole sources, for a frontend to show (None: not kept)."""
        found = await self.find(sha256, model, (0, None))
        return None if found is None else found[1].facts

    async def put(self, key: str, sources: SourceSet) -> bool:
        """Keep `sources` under `key` (manifest last, so a half-written entry is never found),
        then evict the least recently used entries while the cache holds too much.

        Returns whether the entry is kept: not when it alone is over the cap (it would push
        every other song out, then itself), nor when the store fails half-way (what was
        written is deleted again)."""
        size = sum(path.stat().st_size for path in sources.paths.values())
        if not self.enabled or size > self.max_bytes:
            return False
        await self._check_room(size)
        codecs = {path.suffix.lstrip(".") for path in sources.paths.values()}
        if len(codecs) != 1:
            raise ValueError(f"a song's sources are kept in one file type, not {sorted(codecs)}")
        written: list[str] = []
        try:
            for name, path in sources.paths.items():
                written.append(f"{key}:{name}.{next(iter(codecs))}")
                await self.store.put(written[-1], mapped(path), self.ttl_s)
            manifest = Manifest(
                sources=list(sources.paths), offset=sources.offset, frames=sources.frames, whole=sources.whole,
                size_bytes=size, title=sources.title, artist=sources.artist, codec=next(iter(codecs)),
                facts=sources.facts,
            )  # fmt: skip
            await self.store.put(key, manifest.model_dump_json().encode(), self.ttl_s)
        except BaseException:  # a half-kept entry (the store full, say) is not left to expire
            with contextlib.suppress(Exception):
                await asyncio.shield(self._undo(key, written))
            raise
        return key not in await self.evict()

    async def _check_room(self, size: int) -> None:
        """Refuse to keep `size` bytes in a Redis that would then be past `redis_full_ratio`.

        Not only to leave accepted jobs their room: a write Redis refuses for want of memory
        leaves its buffer in Redis for a moment (until Redis's cron trims it), and the job's
        own next writes (its final progress, arq's result) were refused meanwhile, so a job
        whose sources did not fit sometimes failed (issue #20's flaky test).
        """
        if not self._in_redis:
            return
        try:
            memory = await self.redis.info("memory")
        except ResponseError:  # a managed Redis that hides INFO: its own refusals still count
            return
        limit, used = int(memory.get("maxmemory", 0)), int(memory.get("used_memory", 0))
        if limit and used + size > self._full_ratio * limit:
            raise StorageFull(detail=f"Redis holds {used} of {limit} bytes: no room for {size} bytes of sources")

    async def _undo(self, key: str, written: list[str]) -> None:
        await self.store.delete(key, *written)

    async def claim(self, key: str, holder: str, ttl_s: float) -> Claim:
        """Mark `key`'s separation as under way by `holder` (a job id), unless another job's is,
        so the same song asked for twice at once runs the model once. A claim lapses after
        `ttl_s` unless renewed: a worker that dies holding one holds up nobody for long.
        `holder` may take its own claim again (a retry after its worker died)."""
        got = await self.redis.eval(_CLAIM, 1, self._claim(key), holder, str(int(ttl_s * 1000)))  # type: ignore[misc]
        if got == b"ours":
            return "ours"
        return "unkept" if got == _UNKEPT.encode() else "held"

    async def claimed(self, key: str) -> bool:
        return bool(await self.redis.exists(self._claim(key)))

    async def renew(self, key: str, holder: str, ttl_s: float) -> None:
        await self.redis.eval(_RENEW, 1, self._claim(key), holder, str(int(ttl_s * 1000)))  # type: ignore[misc]

    async def release(self, key: str, holder: str, kept: bool, ttl_s: float) -> None:
        """End `holder`'s claim (one that lapsed may be another job's now). If the sources were
        not kept, say so for `ttl_s`, so the jobs waiting for them separate at once, side by
        side, rather than claim the song in turn and run the model one after another."""
        await self.redis.eval(  # type: ignore[misc]
            _RELEASE, 1, self._claim(key), holder, "" if kept else _UNKEPT, str(int(ttl_s * 1000))
        )

    def _claim(self, key: str) -> str:
        return f"{self._prefix}claim:{key}"

    async def total_bytes(self) -> int:
        return await self.index.bytes_of(await self.index.groups("sources:"))

    async def evict(self) -> list[str]:
        """Drop entries whose manifest expired, then those used longest ago until under the cap.

        An entry without a manifest is dropped only once it is unused for the manifest's
        lifetime: a manifest kept or renewed since then would still be there, so a younger
        one is another job's entry being written (its manifest comes last), not a leftover.
        Its bytes count against the cap, but it is not evicted: its writer evicts once it
        is whole, and may find itself the one to go then."""
        stale = set(await self.index.groups("sources:", used_before=time.time() - self.ttl_s))
        entries, whole = [], []
        for key in await self.index.groups("sources:"):
            has_manifest = bool(await self.store.exists(key))
            if not has_manifest and key in stale:
                await self.drop(key)
            elif await self.index.members(key):
                entries.append(key)
                if has_manifest:
                    whole.append(key)
        evicted = []
        while whole and await self.index.bytes_of(entries) > self.max_bytes:
            key = whole.pop(0)
            entries.remove(key)
            await self.drop(key)
            evicted.append(key)
        return evicted

    async def drop(self, key: str) -> None:
        """Delete an entry: its manifest first, so nobody finds it half gone."""
        await self.store.delete(key)
        await self.store.delete(*await self.index.members(key))
